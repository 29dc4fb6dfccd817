/* errno is zero at program start (C11 7.5p3), also under the drop-in, whose constructor makes
 * the first allocation and so initialises tieralloc (topology discovery reads sysfs files that
 * a machine without HMAT does not have: ENOENT). Programs rely on it, e.g. a strtol whose
 * errno is tested without being cleared first. The check runs first thing in main, before any
 * call that could set errno itself. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    int at_start = errno;
    if (at_start != 0) {
        fprintf(stderr, "errno_start: errno is %d at the start of main\n", at_start);
        return 1;
    }
    /* The strtol idiom that depends on it. */
    char *end;
    long v = strtol("42", &end, 10);
    if (errno != 0 || v != 42) {
        fprintf(stderr, "errno_start: strtol(\"42\") left errno %d\n", errno);
        return 1;
    }
    printf("errno_start ok\n");
    return 0;
}

/* A library loaded with dlopen whose thread-locals live in dynamic TLS: glibc allocates each
 * thread's block with malloc from inside __tls_get_addr, on the first access. */
#include <stdlib.h>
#include <string.h>
static __thread char big_tls[10000];
static __thread int counter;
__attribute__((constructor)) static void init(void) {
    char *p = malloc(1000);
    memset(p, 1, 1000);
    free(p);
}
int tls_touch(int v) {
    big_tls[v % 10000] = (char)v;
    counter += v;
    char *p = strdup("tls");
    int ok = p && strcmp(p, "tls") == 0;
    free(p);
    return ok ? counter : -1;
}

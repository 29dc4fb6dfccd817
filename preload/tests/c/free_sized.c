/* C23's free_sized and free_aligned_sized are exported by the drop-in, so that a program that
 * calls them on a glibc that has them (2.43 and later) does not hand a tieralloc block to
 * glibc's own free. Looked up with dlsym (glibc 2.36 has neither, so a direct call would not
 * link), then used for 200 000 blocks of each kind: had the calls leaked, 1.6 GiB. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

int main(void) {
    void (*fs)(void *, size_t) = (void (*)(void *, size_t))dlsym(RTLD_DEFAULT, "free_sized");
    void (*fas)(void *, size_t, size_t) =
        (void (*)(void *, size_t, size_t))dlsym(RTLD_DEFAULT, "free_aligned_sized");
    if (!fs || !fas) {
        fprintf(stderr, "free_sized: free_sized %p, free_aligned_sized %p: not exported\n",
                (void *)fs, (void *)fas);
        return 1;
    }
    fs(NULL, 0);
    fas(NULL, 64, 0);
    for (int i = 0; i < 200000; i++) {
        size_t n = 4096 + (size_t)(i % 7) * 16;
        char *p = malloc(n);
        char *q = aligned_alloc(4096, 4096);
        if (!p || !q) {
            fprintf(stderr, "free_sized: out of memory at %d\n", i);
            return 1;
        }
        memset(p, 0x5a, n);
        memset(q, 0xa5, 4096);
        fs(p, n);
        fas(q, 4096, 4096);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    if (ru.ru_maxrss > 256 * 1024) {
        fprintf(stderr, "free_sized: peak RSS %ld KiB: the blocks were not freed\n", ru.ru_maxrss);
        return 1;
    }
    printf("free_sized ok\n");
    return 0;
}

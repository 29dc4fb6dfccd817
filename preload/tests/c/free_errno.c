/* free() leaves errno alone (glibc since 2.33; POSIX.1-2024 requires it), also when the
 * purge that a free triggers is refused by the kernel: madvise(MADV_DONTNEED) on locked
 * memory (mlock, mlockall) fails with EINVAL. The program runs itself again with
 * TIERALLOC_PURGE_DELAY_MS=0, so that memory freed is due for purging at once: each round
 * frees a block whose pages are locked, then keeps allocating and freeing blocks of the same
 * size (whose frees purge the locked, free slices and are refused) and checks errno after
 * every free. Locked ranges stay small (under RLIMIT_MEMLOCK's usual 8 MiB). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MARK 4242

int main(int argc, char **argv) {
    (void)argc;
    const char *delay = getenv("TIERALLOC_PURGE_DELAY_MS");
    if (!delay || strcmp(delay, "0") != 0) {
        setenv("TIERALLOC_PURGE_DELAY_MS", "0", 1);
        execv("/proc/self/exe", argv);
        perror("free_errno: execv");
        return 1;
    }
    const size_t sizes[] = {100, 5000, 40000, 200000};
    int bad = 0;
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        size_t n = sizes[k];
        unsigned char *p = malloc(n);
        if (!p) {
            fprintf(stderr, "free_errno: malloc(%zu) failed\n", n);
            return 1;
        }
        memset(p, 1, n);
        uintptr_t lo = (uintptr_t)p & ~(uintptr_t)4095;
        uintptr_t hi = ((uintptr_t)p + n + 4095) & ~(uintptr_t)4095;
        if (mlock((void *)lo, hi - lo) != 0) {
            perror("free_errno: mlock");
            return 1;
        }
        errno = MARK;
        free(p);
        if (errno != MARK) {
            fprintf(stderr, "free_errno: free of a locked %zu-byte block set errno to %d\n", n,
                    errno);
            bad++;
        }
        for (int i = 0; i < 1000; i++) {
            void *q = malloc(n);
            if (!q) {
                fprintf(stderr, "free_errno: malloc(%zu) failed\n", n);
                return 1;
            }
            errno = MARK;
            free(q);
            if (errno != MARK) {
                fprintf(stderr,
                        "free_errno: free %d after a locked %zu-byte block set errno to %d\n",
                        i, n, errno);
                bad++;
                break;
            }
            if (i % 100 == 99) usleep(2000);
        }
        munlock((void *)lo, hi - lo);
    }
    if (bad) return 1;
    printf("free_errno ok\n");
    return 0;
}

/* The C allocation API under LD_PRELOAD: semantics, alignment, contents, errno. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;
#define CHECK(c)                                                                         \
    do {                                                                                 \
        if (!(c)) {                                                                      \
            fprintf(stderr, "api.c:%d: check failed: %s\n", __LINE__, #c);              \
            failures++;                                                                  \
        }                                                                                \
    } while (0)

static void fill(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(i * 31 + seed);
}
static int same(const unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(i * 31 + seed)) return 0;
    return 1;
}

int main(void) {
    /* malloc(0): unique, freeable, 16-aligned. */
    void *z1 = malloc(0), *z2 = malloc(0);
    CHECK(z1 && z2 && z1 != z2);
    CHECK(((uintptr_t)z1 & 15) == 0);
    free(z1);
    free(z2);
    free(NULL);

    /* Every size is 16-aligned, usable >= asked, and holds its contents. */
    static void *keep[6000];
    for (size_t n = 1; n < 6000; n++) {
        unsigned char *p = malloc(n);
        CHECK(p && ((uintptr_t)p & 15) == 0);
        CHECK(malloc_usable_size(p) >= n);
        fill(p, n, (unsigned)n);
        keep[n] = p;
    }
    for (size_t n = 1; n < 6000; n++) {
        CHECK(same(keep[n], n, (unsigned)n));
        free(keep[n]);
    }
    size_t big[] = {70000, 300000, 1 << 20, 3 << 20, 9 << 20, 40 << 20};
    for (size_t i = 0; i < sizeof big / sizeof *big; i++) {
        unsigned char *p = malloc(big[i]);
        CHECK(p && ((uintptr_t)p & 15) == 0 && malloc_usable_size(p) >= big[i]);
        fill(p, big[i], 7);
        CHECK(same(p, big[i], 7));
        free(p);
    }
    CHECK(malloc_usable_size(NULL) == 0);

    /* Failure: NULL and ENOMEM. */
    errno = 0;
    CHECK(malloc(SIZE_MAX) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(malloc(SIZE_MAX / 2) == NULL && errno == ENOMEM);

    /* calloc: zero (also on reused memory), overflow. */
    for (int round = 0; round < 3; round++) {
        for (size_t n = 1; n < 300000; n = n * 3 + 1) {
            unsigned char *p = malloc(n);
            CHECK(p);
            memset(p, 0xAB, n);
            free(p);
            p = calloc(1, n);
            CHECK(p);
            for (size_t i = 0; i < n; i++)
                if (p[i]) { CHECK(!"calloc memory is zero"); break; }
            free(p);
        }
    }
    errno = 0;
    CHECK(calloc(SIZE_MAX / 2, 3) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(calloc((size_t)1 << 33, (size_t)1 << 33) == NULL && errno == ENOMEM);
    void *c0 = calloc(0, 0);
    CHECK(c0 != NULL);
    free(c0);

    /* realloc: growth and shrink keep contents; NULL and 0. */
    unsigned char *r = realloc(NULL, 10);
    CHECK(r);
    fill(r, 10, 1);
    size_t cur = 10;
    size_t steps[] = {20, 100, 5000, 70000, 65536, 200000, 3 << 20, 5 << 20, 100000, 33, 8, 1, 4000};
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        size_t n = steps[i];
        unsigned char *q = realloc(r, n);
        CHECK(q && ((uintptr_t)q & 15) == 0 && malloc_usable_size(q) >= n);
        CHECK(same(q, cur < n ? cur : n, 1));
        fill(q, n, 1);
        r = q;
        cur = n;
    }
    errno = 0;
    CHECK(realloc(r, SIZE_MAX - 100) == NULL && errno == ENOMEM);
    CHECK(same(r, cur, 1)); /* a failed realloc leaves the block alone */
    CHECK(realloc(r, 0) == NULL); /* frees, like glibc */
    errno = 0;
    unsigned char *ra = reallocarray(NULL, 100, 10);
    CHECK(ra && malloc_usable_size(ra) >= 1000);
    CHECK(reallocarray(ra, SIZE_MAX / 2, 4) == NULL && errno == ENOMEM);
    free(ra);

    /* Aligned allocation up to 2 MiB, every entry point. */
    for (size_t a = sizeof(void *); a <= (2u << 20); a *= 2) {
        size_t sizes[] = {0, 1, a / 2 + 1, a, 3 * a + 5, 100000};
        for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
            size_t n = sizes[k];
            void *p = (void *)1;
            CHECK(posix_memalign(&p, a, n) == 0);
            CHECK(p && ((uintptr_t)p % a) == 0 && malloc_usable_size(p) >= n);
            fill(p, n, 3);
            CHECK(same(p, n, 3));
            void *q = aligned_alloc(a, n);
            CHECK(q && ((uintptr_t)q % a) == 0);
            fill(q, n, 4);
            void *m = memalign(a, n);
            CHECK(m && ((uintptr_t)m % a) == 0);
            fill(m, n, 5);
            CHECK(same(p, n, 3) && same(q, n, 4) && same(m, n, 5));
            free(p);
            free(q);
            free(m);
        }
    }
    void *p = (void *)1;
    errno = 1234;
    CHECK(posix_memalign(&p, 24, 10) == EINVAL && p == (void *)1);
    CHECK(posix_memalign(&p, 4, 10) == EINVAL);  /* not a multiple of sizeof(void *) */
    CHECK(posix_memalign(&p, 0, 10) == EINVAL);
    CHECK(posix_memalign(&p, 4u << 20, 10) == ENOMEM); /* above 2 MiB: refused */
    CHECK(posix_memalign(&p, 64, SIZE_MAX - 10) == ENOMEM);
    CHECK(errno == 1234); /* posix_memalign leaves errno alone */
    errno = 0;
    CHECK(aligned_alloc(24, 100) == NULL && errno == EINVAL);
    void *m3 = memalign(48, 100); /* rounded up to 64 */
    CHECK(m3 && ((uintptr_t)m3 % 64) == 0);
    free(m3);
    void *v = valloc(100);
    CHECK(v && ((uintptr_t)v % 4096) == 0);
    free(v);
    void *pv = pvalloc(5000);
    CHECK(pv && ((uintptr_t)pv % 4096) == 0 && malloc_usable_size(pv) >= 8192);
    free(pv);
    pv = pvalloc(0);
    CHECK(pv && ((uintptr_t)pv % 4096) == 0);
    free(pv);

    /* The introspection calls answer. */
    CHECK(mallopt(M_ARENA_MAX, 1) == 1);
    void *live = malloc(1000);
    struct mallinfo2 mi = mallinfo2();
    CHECK(mi.uordblks >= 1000 && mi.arena >= mi.uordblks);
    free(live);
    CHECK(malloc_trim(0) == 1);

    if (failures) {
        fprintf(stderr, "%d checks failed\n", failures);
        return 1;
    }
    printf("api ok\n");
    return 0;
}

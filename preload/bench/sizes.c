/* Many sizes: each thread keeps a working set of blocks whose sizes are log-uniform from 8 B
 * to 256 KiB (and a few of 1-4 MiB), replaces random ones, grows some with realloc, and
 * touches what it allocates; the working set shrinks and grows again between phases.
 * Usage: sizes [threads] [ops per thread] [working set per thread] */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int nthreads = 4;
static long nops = 400000;
static int wset = 4000;
static uint64_t sums[64];

static inline uint64_t rnd(uint64_t *s) { *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17; return *s; }

static size_t pick(uint64_t r) {
    if (r % 2000 == 0) return (1u << 20) + (r >> 12) % (3u << 20);
    unsigned bits = 3 + (unsigned)((r >> 8) % 16);          /* 8 B .. 256 KiB */
    size_t base = (size_t)1 << bits;
    return base + (r >> 24) % base;
}

static void *worker(void *arg) {
    uint64_t s = 0xD1B54A32D192ED03ull * ((size_t)arg + 1), sum = 0;
    unsigned char **a = calloc((size_t)wset, sizeof *a);
    size_t *len = calloc((size_t)wset, sizeof *len);
    for (long i = 0; i < nops; i++) {
        uint64_t r = rnd(&s);
        /* phase: every 100k ops, only the first tenth of the set is in use for a while */
        long phase = (i / 50000) % 4;
        int live = phase == 3 ? wset / 10 : wset;
        int k = (int)(r % (uint64_t)live);
        if (phase == 3 && a[live + (int)((r >> 40) % (uint64_t)(wset - live))]) {
            int j = live + (int)((r >> 40) % (uint64_t)(wset - live));
            free(a[j]); a[j] = NULL;
        }
        if (a[k] && (r >> 60) == 0) {
            size_t n = len[k] + len[k] / 2 + 16;
            unsigned char *p = realloc(a[k], n);
            if (!p) abort();
            p[n - 1] = 3;
            a[k] = p; len[k] = n;
            continue;
        }
        if (a[k]) { sum += a[k][len[k] - 1]; free(a[k]); }
        size_t n = pick(r >> 4);
        unsigned char *p = malloc(n);
        if (!p) abort();
        for (size_t off = 0; off < n; off += 4096) p[off] = 1;
        p[n - 1] = (unsigned char)n;
        a[k] = p; len[k] = n;
    }
    for (int k = 0; k < wset; k++) free(a[k]);
    free(a); free(len);
    sums[(size_t)arg] = sum;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) nthreads = atoi(argv[1]);
    if (argc > 2) nops = atol(argv[2]);
    if (argc > 3) wset = atoi(argv[3]);
    if (nthreads < 1 || nthreads > 64 || wset < 20) return 2;
    pthread_t th[64];
    for (size_t t = 0; t < (size_t)nthreads; t++) pthread_create(&th[t], NULL, worker, (void *)t);
    uint64_t total = 0;
    for (int t = 0; t < nthreads; t++) { pthread_join(th[t], NULL); total += sums[t]; }
    printf("sizes %llu\n", (unsigned long long)total);
    return 0;
}

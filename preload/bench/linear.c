/* Random linear sizes with cross-thread frees: threads share one array of slots; each
 * operation allocates a block of a size drawn uniformly from 1 B to 16 KiB, writes one byte
 * in each of its 4 KiB pages and its last byte, swaps it into a random slot with an atomic exchange and frees what was
 * there, so about (threads - 1) / threads of the frees are of another thread's blocks.
 * Usage: linear [threads] [ops per thread] [slots] */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static int nthreads = 2;
static long nops = 4000000;
static long nslots = 20000;
static _Atomic(unsigned char *) *slots;
static uint64_t sums[64];

static inline uint64_t rnd(uint64_t *s) { *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17; return *s; }

static void *worker(void *arg) {
    long t = (long)arg;
    uint64_t s = 0x9e3779b97f4a7c15ull * (uint64_t)(t + 1), sum = 0;
    for (long i = 0; i < nops; i++) {
        uint64_t r = rnd(&s);
        size_t size = 1 + (size_t)(r % 16384);
        unsigned char *p = malloc(size);
        if (!p) { fprintf(stderr, "out of memory\n"); exit(1); }
        for (size_t off = 0; off < size; off += 4096) p[off] = (unsigned char)r;
        p[size - 1] = (unsigned char)(r >> 8);
        unsigned char *old = atomic_exchange(&slots[(r >> 20) % (uint64_t)nslots], p);
        if (old) { sum += old[0]; free(old); }
    }
    sums[t] = sum;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) nthreads = atoi(argv[1]);
    if (argc > 2) nops = atol(argv[2]);
    if (argc > 3) nslots = atol(argv[3]);
    if (nthreads < 1 || nthreads > 64 || nops < 1 || nslots < 1) { fprintf(stderr, "bad arguments\n"); return 2; }
    slots = calloc((size_t)nslots, sizeof *slots);
    if (!slots) return 1;
    pthread_t th[64];
    for (long t = 0; t < nthreads; t++) pthread_create(&th[t], NULL, worker, (void *)t);
    for (long t = 0; t < nthreads; t++) pthread_join(th[t], NULL);
    long left = 0;
    for (long k = 0; k < nslots; k++) {
        unsigned char *p = atomic_load(&slots[k]);
        if (p) { left++; free(p); }
    }
    free(slots);
    /* The sums depend on the interleaving, so only the counts are printed (the same line
     * under every allocator). */
    printf("linear: %d threads x %ld ops, %ld slots, %ld left\n", nthreads, nops, nslots, left);
    (void)sums;
    return 0;
}

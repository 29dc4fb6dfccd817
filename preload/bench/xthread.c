/* Cross-thread churn with thread recreation: every round starts a fresh set of threads. Each
 * allocates objects of random sizes (mostly up to 1 KiB; one in a hundred 100 times bigger,
 * one in a thousand 1000 times, one in ten thousand 10000 times, up to 10 MiB), writes every
 * word, and keeps them in two sets of its own: a working set it frees from at random as it
 * goes, and a retained set it frees only when it ends. A quarter of its steps swap a working
 * object with a slot of a shared array that outlives the threads, so what one thread
 * allocated is freed by another, often of a later round, after its allocator died; between
 * rounds the main thread frees half of the shared slots. Contents are checked on every free.
 * Usage: xthread [threads] [rounds] [allocations per thread per round] */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SHARED 1000
static _Atomic(uintptr_t) shared[SHARED];
static long per_thread = 2500;

static uint64_t next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return *s = x;
}
static int one_in(uint64_t *s, unsigned n) { return next(s) % n == 0; }

/* words: 1 << (0..max_shift-1), scaled up now and then; every word holds (index ^ key). */
static uint64_t *make(uint64_t *s, unsigned max_shift) {
    size_t words = (size_t)1 << (next(s) % max_shift);
    if (one_in(s, 100)) {
        if (one_in(s, 100)) words *= 10000;
        else if (one_in(s, 10)) words *= 1000;
        else words *= 100;
    }
    uint64_t *p = malloc(words * 8);
    if (!p) { perror("malloc"); exit(1); }
    uint64_t key = (uintptr_t)p * 0x9E3779B97F4A7C15ull;
    p[0] = words;
    for (size_t i = 1; i < words; i++) p[i] = i ^ key;
    return p;
}

static void drop(uint64_t *p) {
    if (!p) return;
    size_t words = p[0];
    uint64_t key = (uintptr_t)p * 0x9E3779B97F4A7C15ull;
    for (size_t i = 1; i < words; i += 1 + i / 4)
        if (p[i] != (i ^ key)) { fprintf(stderr, "corrupt object %p\n", (void *)p); abort(); }
    if (words > 1 && p[words - 1] != ((words - 1) ^ key)) { fprintf(stderr, "corrupt end %p\n", (void *)p); abort(); }
    free(p);
}

static void *worker(void *arg) {
    uint64_t s = 0x2545F4914F6CDD1Dull ^ ((uintptr_t)arg * 0x9E3779B97F4A7C15ull);
    long n = per_thread * (1 + (long)((uintptr_t)arg % 4)), keep = n / 2;
    size_t cap = 64, top = 0, kept = 0;
    uint64_t **work = malloc(cap * sizeof *work), **retained = malloc(keep * sizeof *retained);
    while (n > 0 || keep > 0) {
        if (keep == 0 || (n > 0 && one_in(&s, 2))) {
            if (top == cap) {
                cap *= 2;
                work = realloc(work, cap * sizeof *work);
                if (!work) { perror("realloc"); exit(1); }
            }
            work[top++] = make(&s, 5);
            n--;
        } else {
            retained[kept++] = make(&s, 7);
            keep--;
        }
        if (top > 0 && next(&s) % 3 != 0) {
            size_t k = next(&s) % top;
            drop(work[k]);
            work[k] = work[--top];
        }
        if (top > 0 && one_in(&s, 4)) {
            size_t k = next(&s) % top, j = next(&s) % SHARED;
            work[k] = (uint64_t *)atomic_exchange(&shared[j], (uintptr_t)work[k]);
            if (!work[k]) work[k] = work[--top];
        }
    }
    for (size_t k = 0; k < kept; k++) drop(retained[k]);
    for (size_t k = 0; k < top; k++) drop(work[k]);
    free(retained);
    free(work);
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 4;
    int rounds = argc > 2 ? atoi(argv[2]) : 50;
    if (argc > 3) per_thread = atol(argv[3]);
    if (threads < 1 || threads > 256 || rounds < 1 || per_thread < 1) {
        fprintf(stderr, "usage: xthread [threads 1-256] [rounds] [allocations per thread]\n");
        return 2;
    }
    pthread_t t[256];
    uint64_t s = 42;
    for (int round = 0; round < rounds; round++) {
        for (int i = 0; i < threads; i++)
            pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(round * threads + i + 1));
        for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
        for (size_t j = 0; j < SHARED; j++)
            if (round + 1 == rounds || one_in(&s, 2))
                drop((uint64_t *)atomic_exchange(&shared[j], 0));
    }
    printf("xthread: %d threads, %d rounds, %ld allocations: ok\n", threads, rounds, per_thread);
    return 0;
}

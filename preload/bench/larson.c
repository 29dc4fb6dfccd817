/* Server churn in the style of larson: each thread owns a slot array of live objects and
 * replaces random slots with new objects of random size (16..1024 B, some up to 8 KiB); at
 * every epoch the arrays rotate between threads, so most frees are of blocks another thread
 * allocated. Usage: larson [threads] [epochs] [ops per epoch] [slots per thread] */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int nthreads = 4, epochs = 40, ops = 100000, slots = 2000;
static void ***arrays;
static pthread_barrier_t bar;
static uint64_t sums[64];

static inline uint64_t rnd(uint64_t *s) {
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    return *s;
}

static void *worker(void *arg) {
    size_t id = (size_t)arg;
    uint64_t s = 0x9E3779B97F4A7C15ull * (id + 1), sum = 0;
    for (int e = 0; e < epochs; e++) {
        void **a = arrays[(id + (size_t)e) % (size_t)nthreads];
        for (int i = 0; i < ops; i++) {
            uint64_t r = rnd(&s);
            size_t k = r % (uint64_t)slots;
            size_t n = (r >> 32) % 64 == 0 ? 16 + (r >> 40) % 8192 : 16 + (r >> 40) % 1009;
            if (a[k]) sum += *(unsigned char *)a[k];
            free(a[k]);
            unsigned char *p = malloc(n);
            p[0] = (unsigned char)n;
            p[n - 1] = 1;
            a[k] = p;
        }
        pthread_barrier_wait(&bar);
    }
    sums[id] = sum;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) nthreads = atoi(argv[1]);
    if (argc > 2) epochs = atoi(argv[2]);
    if (argc > 3) ops = atoi(argv[3]);
    if (argc > 4) slots = atoi(argv[4]);
    if (nthreads < 1 || nthreads > 64) return 2;
    arrays = calloc((size_t)nthreads, sizeof *arrays);
    for (int t = 0; t < nthreads; t++) arrays[t] = calloc((size_t)slots, sizeof(void *));
    pthread_barrier_init(&bar, NULL, (unsigned)nthreads);
    pthread_t th[64];
    for (size_t t = 0; t < (size_t)nthreads; t++) pthread_create(&th[t], NULL, worker, (void *)t);
    uint64_t total = 0;
    for (int t = 0; t < nthreads; t++) { pthread_join(th[t], NULL); total += sums[t]; }
    for (int t = 0; t < nthreads; t++) {
        for (int k = 0; k < slots; k++) free(arrays[t][k]);
        free(arrays[t]);
    }
    free(arrays);
    printf("larson %llu\n", (unsigned long long)total);
    return 0;
}

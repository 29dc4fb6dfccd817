/* Producer/consumer: producers allocate messages (32 B..4 KiB), fill them and hand them over in
 * batches through a bounded queue; consumers read and free them. Every free is remote.
 * Usage: prodcons [producer/consumer pairs] [messages per producer] */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH 64
#define QCAP 256
typedef struct { void *m[BATCH]; int n; } batch_t;
static batch_t *q[QCAP];
static int head, tail, count, producers_left;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t not_full = PTHREAD_COND_INITIALIZER, not_empty = PTHREAD_COND_INITIALIZER;
static long per_producer = 1000000;
static uint64_t sums[64];

static void push(batch_t *b) {
    pthread_mutex_lock(&mu);
    while (count == QCAP) pthread_cond_wait(&not_full, &mu);
    q[tail] = b; tail = (tail + 1) % QCAP; count++;
    pthread_cond_signal(&not_empty);
    pthread_mutex_unlock(&mu);
}
static batch_t *pop(void) {
    pthread_mutex_lock(&mu);
    while (count == 0 && producers_left > 0) pthread_cond_wait(&not_empty, &mu);
    batch_t *b = NULL;
    if (count > 0) { b = q[head]; head = (head + 1) % QCAP; count--; pthread_cond_signal(&not_full); }
    pthread_mutex_unlock(&mu);
    return b;
}

static void *producer(void *arg) {
    uint64_t s = 0x2545F4914F6CDD1Dull * ((size_t)arg + 1);
    batch_t *b = NULL;
    for (long i = 0; i < per_producer; i++) {
        if (!b) { b = malloc(sizeof *b); b->n = 0; }
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        size_t n = 32 + (s >> 20) % ((s & 7) == 0 ? 4064 : 480);
        unsigned char *m = malloc(n);
        memset(m, (int)(s & 0xff), n < 64 ? n : 64);
        m[n - 1] = (unsigned char)n;
        b->m[b->n++] = m;
        if (b->n == BATCH) { push(b); b = NULL; }
    }
    if (b) push(b);
    pthread_mutex_lock(&mu);
    producers_left--;
    pthread_cond_broadcast(&not_empty);
    pthread_mutex_unlock(&mu);
    return NULL;
}

static void *consumer(void *arg) {
    uint64_t sum = 0;
    batch_t *b;
    while ((b = pop()) != NULL) {
        for (int i = 0; i < b->n; i++) { sum += ((unsigned char *)b->m[i])[0]; free(b->m[i]); }
        free(b);
    }
    sums[(size_t)arg] = sum;
    return NULL;
}

int main(int argc, char **argv) {
    int pairs = argc > 1 ? atoi(argv[1]) : 2;
    if (argc > 2) per_producer = atol(argv[2]);
    if (pairs < 1 || pairs > 32) return 2;
    producers_left = pairs;
    pthread_t p[32], c[32];
    for (size_t i = 0; i < (size_t)pairs; i++) {
        pthread_create(&p[i], NULL, producer, (void *)i);
        pthread_create(&c[i], NULL, consumer, (void *)i);
    }
    uint64_t total = 0;
    for (int i = 0; i < pairs; i++) { pthread_join(p[i], NULL); }
    for (int i = 0; i < pairs; i++) { pthread_join(c[i], NULL); total += sums[i]; }
    printf("prodcons %llu\n", (unsigned long long)total);
    return 0;
}

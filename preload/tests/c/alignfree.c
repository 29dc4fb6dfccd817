/* Aligned blocks above 4 KiB freed on another thread: posix_memalign, aligned_alloc and
 * memalign with alignments from 8 KiB to 1 MiB, filled on one thread and checked and freed
 * on another, round after round. Every block is aligned and keeps its contents until freed
 * (no block overlaps a live one); the freed memory is reused (peak RSS stays near what is
 * live, far below the total allocated). */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define CHECK(c)                                                                   \
    do {                                                                           \
        if (!(c)) {                                                                \
            fprintf(stderr, "alignfree: check failed at line %d: %s\n", __LINE__, #c); \
            exit(1);                                                               \
        }                                                                          \
    } while (0)

#define SLOTS 64
#define ROUNDS 400

struct blk { unsigned char *p; size_t size; unsigned char seed; };
static struct blk queue[SLOTS];
static int head, tail, count, done;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

static int intact(const struct blk *b) {
    for (size_t i = 0; i + 1 < b->size; i += 512)
        if (b->p[i] != (unsigned char)(b->seed + i / 512)) return 0;
    return b->p[b->size - 1] == (unsigned char)~b->seed;
}

static void *consumer(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&mu);
        while (count == 0 && !done) pthread_cond_wait(&cv, &mu);
        if (count == 0 && done) {
            pthread_mutex_unlock(&mu);
            return NULL;
        }
        struct blk b = queue[head];
        head = (head + 1) % SLOTS;
        count--;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
        CHECK(intact(&b));
        free(b.p);
    }
}

int main(void) {
    pthread_t t;
    CHECK(pthread_create(&t, NULL, consumer, NULL) == 0);
    size_t total = 0;
    unsigned x = 12345;
    struct blk mine[8] = {{0}};
    for (int r = 0; r < ROUNDS; r++) {
        for (int k = 0; k < 24; k++) {
            x = x * 1103515245u + 12345u;
            size_t align = (size_t)8192 << (x >> 8) % 8; /* 8 KiB .. 1 MiB */
            size_t size = 1 + (x >> 4) % (3 * align);
            unsigned char *p = NULL;
            switch ((x >> 20) % 3) {
            case 0: CHECK(posix_memalign((void **)&p, align, size) == 0); break;
            case 1: p = aligned_alloc(align, (size + align - 1) / align * align); break;
            default: p = memalign(align, size); break;
            }
            CHECK(p != NULL);
            CHECK((uintptr_t)p % align == 0);
            CHECK(malloc_usable_size(p) >= size);
            struct blk b = {p, size, (unsigned char)(r * 31 + k)};
            for (size_t i = 0; i + 1 < size; i += 512) p[i] = (unsigned char)(b.seed + i / 512);
            p[size - 1] = (unsigned char)~b.seed;
            total += size;
            if (k < 8) {
                /* Kept here a while: must stay intact while the other thread frees. */
                if (mine[k].p) {
                    CHECK(intact(&mine[k]));
                    free(mine[k].p);
                }
                mine[k] = b;
                continue;
            }
            pthread_mutex_lock(&mu);
            while (count == SLOTS) pthread_cond_wait(&cv, &mu);
            queue[tail] = b;
            tail = (tail + 1) % SLOTS;
            count++;
            pthread_cond_broadcast(&cv);
            pthread_mutex_unlock(&mu);
        }
    }
    pthread_mutex_lock(&mu);
    done = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    CHECK(pthread_join(t, NULL) == 0);
    for (int k = 0; k < 8; k++) {
        CHECK(intact(&mine[k]));
        free(mine[k].p);
    }
    struct rusage ru;
    CHECK(getrusage(RUSAGE_SELF, &ru) == 0);
    size_t peak = (size_t)ru.ru_maxrss * 1024;
    printf("alignfree: %zu MiB allocated, peak RSS %zu MiB\n", total >> 20, peak >> 20);
    /* At most 72 blocks of up to 3 MiB live: well under 256 MiB; without reuse the total
     * (several GiB) would be resident. */
    CHECK(total > ((size_t)2 << 30));
    CHECK(peak < ((size_t)256 << 20));
    printf("alignfree ok\n");
    return 0;
}

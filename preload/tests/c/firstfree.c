/* A thread whose very first allocator call is free() of a block another thread allocated:
 * tieralloc's initial-exec TLS slot still holds its placeholder heap then, and the free goes
 * through free::free_first, which looks the thread's heap up first. The block must be freed
 * for good: its owner gets it back once its page's free list runs dry, within a few pages'
 * worth of allocations of its size (a lost block never comes back). Several rounds, each with
 * a new thread. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define SIZE 1000
#define ROUNDS 6
#define LIMIT 4096
/* A page of this size class holds 64 blocks: a few pages' worth. */
#define BOUND 256

static void *first_call_frees(void *arg) {
    free(arg);
    return NULL;
}

static void *got[LIMIT];

int main(void) {
    for (int round = 0; round < ROUNDS; round++) {
        void *p = malloc(SIZE);
        pthread_t t;
        if (!p || pthread_create(&t, NULL, first_call_frees, p) != 0 || pthread_join(t, NULL) != 0) {
            fprintf(stderr, "firstfree: round %d: malloc or pthread failed\n", round);
            return 1;
        }
        int n = 0, back = -1;
        while (n < LIMIT) {
            void *q = malloc(SIZE);
            if (!q) {
                fprintf(stderr, "firstfree: malloc failed\n");
                return 1;
            }
            got[n++] = q;
            if (q == p) {
                back = n - 1;
                break;
            }
        }
        for (int i = 0; i < n; i++) free(got[i]);
        if (back < 0) {
            fprintf(stderr, "firstfree: round %d: the block freed by a thread's first call "
                            "never came back in %d allocations\n", round, LIMIT);
            return 1;
        }
        if (back >= BOUND) {
            fprintf(stderr, "firstfree: round %d: the block came back only at allocation %d\n",
                    round, back);
            return 1;
        }
        printf("round %d: back at allocation %d\n", round, back);
    }
    printf("firstfree ok\n");
    return 0;
}

/* Short-lived threads, one at a time: each frees the small object the thread before it left,
 * allocates a few short-lived blocks and one small object of its own that outlives it, and
 * exits. What it measures is the memory a dead thread's heap keeps (peak RSS).
 * Usage: threadlife [threads] [object size] */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *last;
static size_t osize = 48;

static void *life(void *arg) {
    (void)arg;
    free(last);
    void *tmp[8];
    for (int k = 0; k < 8; k++) { tmp[k] = malloc(16 << k); memset(tmp[k], k, 16 << k); }
    for (int k = 0; k < 8; k++) free(tmp[k]);
    last = malloc(osize);
    if (!last) { fprintf(stderr, "out of memory\n"); exit(1); }
    memset(last, 1, osize);
    return NULL;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 5000;
    if (argc > 2) osize = (size_t)atol(argv[2]);
    if (n < 1 || osize < 1) { fprintf(stderr, "bad arguments\n"); return 2; }
    for (long i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, life, NULL) != 0) { fprintf(stderr, "pthread_create\n"); return 1; }
        pthread_join(t, NULL);
    }
    free(last);
    printf("threadlife: %ld threads, %zu-byte objects\n", n, osize);
    return 0;
}

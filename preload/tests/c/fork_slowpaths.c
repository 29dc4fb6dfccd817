/* fork, many times, while worker threads spend most of their time in the allocator's slow
 * paths (review rev50): every block is 64 KiB to 1 MiB (a large block: a run of slices taken
 * off a segment and given back on free), and a third of them are freed by another worker
 * (through a shared exchange). Every live block of the parent is on a global table, so each
 * child first allocates large blocks of its own (from the segments of the workers, which
 * died with the fork and were abandoned by the child's reset), stamps them, then checks and
 * frees every block the dead workers held, then checks and frees its own, and does it again
 * on a thread it starts (on a dead worker's stack). A segment that a worker was halfway
 * through changing at the fork (slices taken but not yet counted, a page half written) shows
 * as a crash, a block handed out twice (a stamp overwritten) or a hang (the child's alarm).
 * Run with TIERALLOC_SIMULATE_NODES=2 and the background purger
 * (preload/tests/fork_suite.rs). Prints "fork_slowpaths ok". */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fork_child.h"

#define WORKERS 8
#define SLOTS 8
#define XCHG 16
#define MAX_FORKS 3000
#define SECONDS 8
#define CHILD_BLOCKS 24

/* Every live block of the workers: their own slots, then the exchange. */
static _Atomic(void *) held[WORKERS * SLOTS + XCHG];
static atomic_int stop;

static uint64_t next_rand(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static size_t pick_size(uint64_t *s) { return (64 << 10) + next_rand(s) % ((1 << 20) - (64 << 10)); }

static unsigned char tag_of(void *p, size_t n) { return (unsigned char)(((uintptr_t)p >> 12) ^ (n >> 3) ^ 0x5a); }

/* A block of `len` bytes with its length in its first word and its tag at byte 8, in the
 * middle and at its last byte. */
static void *stamped(size_t len) {
    unsigned char *p = malloc(len);
    if (!p) return NULL;
    memcpy(p, &len, sizeof len);
    unsigned char t = tag_of(p, len);
    p[8] = t;
    p[len / 2] = t;
    p[len - 1] = t;
    return p;
}

/* Checks a block's stamps and frees it; 1 if they were intact. */
static int check_free(void *v) {
    unsigned char *p = v;
    size_t n;
    memcpy(&n, p, sizeof n);
    if (n < (64 << 10) || n > (1 << 20)) return 0; /* not freed: its length is gone */
    unsigned char t = tag_of(p, n);
    int ok = p[8] == t && p[n / 2] == t && p[n - 1] == t;
    free(p);
    return ok;
}

static void *worker(void *arg) {
    uintptr_t w = (uintptr_t)arg;
    uint64_t s = (w + 1) * 0x9e3779b97f4a7c15u;
    long bad = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        _Atomic(void *) *slot = &held[w * SLOTS + next_rand(&s) % SLOTS];
        void *old = atomic_exchange(slot, NULL);
        if (old) bad += !check_free(old);
        void *p = stamped(pick_size(&s));
        if (p && next_rand(&s) % 3 == 0) {
            /* Hand it over: what was in the exchange slot (another worker's) is ours to free. */
            void *x = atomic_exchange(&held[WORKERS * SLOTS + next_rand(&s) % XCHG], p);
            p = NULL;
            if (x) bad += !check_free(x);
        }
        atomic_store(slot, p);
    }
    return (void *)(intptr_t)bad;
}

/* Large blocks of the calling thread (in the dead workers' segments once those are
 * adopted), the dead workers' blocks checked and freed, then its own. */
static long churn_in_child(uint64_t seed, int take_held) {
    uint64_t s = seed | 1;
    void *mine[CHILD_BLOCKS];
    long bad = 0;
    for (int i = 0; i < CHILD_BLOCKS; i++) mine[i] = stamped(pick_size(&s));
    if (take_held)
        for (unsigned k = 0; k < WORKERS * SLOTS + XCHG; k++) {
            void *p = atomic_exchange(&held[k], NULL);
            if (p) bad += !check_free(p);
        }
    for (int round = 0; round < 4; round++)
        for (int i = 0; i < CHILD_BLOCKS; i++) {
            if (mine[i]) bad += !check_free(mine[i]);
            mine[i] = stamped(pick_size(&s));
        }
    for (int i = 0; i < CHILD_BLOCKS; i++)
        if (mine[i]) bad += !check_free(mine[i]);
    return bad;
}

static void *child_thread(void *arg) { return (void *)(intptr_t)churn_in_child((uintptr_t)arg, 0); }

static void child(int k) {
    alarm(20);
    long bad = churn_in_child(777 + k, 1);
    pthread_t t;
    void *r;
    if (pthread_create(&t, NULL, child_thread, (void *)(uintptr_t)(999 + k)) != 0 || pthread_join(t, &r) != 0) _exit(3);
    bad += (long)(intptr_t)r;
    _exit(bad ? 2 : 0);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(void) {
    pthread_t w[WORKERS];
    for (uintptr_t i = 0; i < WORKERS; i++)
        if (pthread_create(&w[i], NULL, worker, (void *)i) != 0) return 10;
    int failed = 0, forks = 0;
    double end = now_s() + SECONDS;
    while (forks < MAX_FORKS && now_s() < end) {
        pid_t pid = fork();
        if (pid < 0) return 11;
        if (pid == 0) child(forks);
        forks++;
        if (!child_ok(pid, forks)) {
            failed++;
            if (failed >= 5) break;
        }
    }
    atomic_store(&stop, 1);
    long bad = join_workers(w, WORKERS);
    for (unsigned k = 0; k < WORKERS * SLOTS + XCHG; k++) {
        void *p = atomic_exchange(&held[k], NULL);
        if (p) bad += !check_free(p);
    }
    fprintf(stderr, "fork_slowpaths: %d forks, %d children failed, %ld blocks overwritten in the parent\n", forks,
            failed, bad);
    if (failed || bad || forks < 10) return 1;
    printf("fork_slowpaths ok\n");
    return 0;
}

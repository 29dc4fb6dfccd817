/* fork, many times, from the main thread while worker threads malloc and free in a loop
 * (review rev29): small to huge blocks, aligned ones, realloc, and frees of each other's
 * blocks through a shared exchange (so remote and delayed frees are in flight at the fork).
 * Each child mallocs and frees (also blocks of the exchange: the dead workers'), starts a
 * thread that does the same, joins it and exits with exit(), so its atexit hooks and its main
 * thread's exit run. A child that hangs is killed by its alarm; one that crashes or finds a
 * block overwritten fails. Run plain, under TIERALLOC_SIMULATE_NODES=2 and with
 * TIERALLOC_BACKGROUND_PURGE=1 (preload/tests/fork_suite.rs). Prints "fork_loop ok". */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fork_child.h"

#define WORKERS 3
#define FORKS 100
#define SLOTS 64
#define XCHG 32

static _Atomic(void *) xchg[XCHG];
static atomic_int stop;

static uint64_t next_rand(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static size_t pick_size(uint64_t *s) {
    uint64_t r = next_rand(s) % 1000;
    if (r < 700) return 16 + next_rand(s) % 512;
    if (r < 950) return 1024 + next_rand(s) % (64 << 10);
    if (r < 998) return (64 << 10) + next_rand(s) % (1 << 20);
    return (4 << 20) + next_rand(s) % (4 << 20);
}

static unsigned char tag_of(void *p, size_t n) { return (unsigned char)(((uintptr_t)p >> 4) ^ n); }

/* A block holding its length in its first word, stamped at its byte 8 and its last byte. */
static void *stamped(uint64_t *s, size_t *n) {
    size_t len = pick_size(s);
    void *p = NULL;
    uint64_t how = next_rand(s) % 8;
    if (how == 0) {
        if (posix_memalign(&p, 64 << (next_rand(s) % 6), len) != 0) p = NULL;
    } else if (how == 1) {
        p = malloc(len / 2 + 1);
        if (p) p = realloc(p, len);
    } else if (how == 2) {
        p = calloc(1, len);
    } else {
        p = malloc(len);
    }
    if (!p) return NULL;
    memcpy(p, &len, sizeof len);
    ((unsigned char *)p)[8] = tag_of(p, len);
    ((unsigned char *)p)[len - 1] = tag_of(p, len);
    *n = len;
    return p;
}

/* Checks a block's stamps and frees it; 1 if they were intact. */
static int check_free(void *p) {
    size_t n;
    memcpy(&n, p, sizeof n);
    int ok = n >= 16 && ((unsigned char *)p)[8] == tag_of(p, n) && ((unsigned char *)p)[n - 1] == tag_of(p, n);
    free(p);
    return ok;
}

/* Allocates and frees in a loop of `rounds` (forever if 0, until `stop`); swaps blocks with
 * the exchange so that other threads free them. Returns the blocks found overwritten. */
static long churn(uint64_t seed, long rounds) {
    void *slot[SLOTS] = {0};
    size_t size[SLOTS] = {0};
    uint64_t s = seed | 1;
    long bad = 0;
    for (long i = 0; rounds == 0 ? !atomic_load_explicit(&stop, memory_order_relaxed) : i < rounds; i++) {
        unsigned k = next_rand(&s) % SLOTS;
        if (slot[k]) bad += !check_free(slot[k]);
        slot[k] = stamped(&s, &size[k]);
        if (slot[k] && next_rand(&s) % 4 == 0) {
            /* Hand it over: whatever was in the exchange slot is ours to free. */
            void *old = atomic_exchange(&xchg[next_rand(&s) % XCHG], slot[k]);
            slot[k] = NULL;
            if (old) bad += !check_free(old);
        }
    }
    for (unsigned k = 0; k < SLOTS; k++)
        if (slot[k]) bad += !check_free(slot[k]);
    return bad;
}

static void *worker(void *arg) {
    return (void *)(intptr_t)churn((uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15u, 0);
}

static void *child_thread(void *arg) {
    (void)arg;
    return (void *)(intptr_t)churn(12345, 1000);
}

/* In the child: take in what the exchange holds (blocks of threads that died with the
 * fork), churn, start a thread that churns, join it, exit. */
static void child(int k) {
    alarm(30);
    long bad = 0;
    for (unsigned x = 0; x < XCHG; x++) {
        void *p = atomic_exchange(&xchg[x], NULL);
        if (p) bad += !check_free(p);
    }
    bad += churn(777 + k, 1000);
    pthread_t t;
    void *r;
    if (pthread_create(&t, NULL, child_thread, NULL) != 0 || pthread_join(t, &r) != 0) exit(3);
    bad += (long)(intptr_t)r;
    exit(bad ? 2 : 0);
}

int main(void) {
    pthread_t w[WORKERS];
    for (intptr_t i = 0; i < WORKERS; i++)
        if (pthread_create(&w[i], NULL, worker, (void *)(i + 1)) != 0) return 10;
    int failed = 0;
    for (int k = 0; k < FORKS; k++) {
        usleep(500 + (k % 7) * 300);
        pid_t pid = fork();
        if (pid < 0) return 11;
        if (pid == 0) child(k);
        if (!child_ok(pid, k)) {
            failed++;
            if (failed > 3) break;
        }
    }
    atomic_store(&stop, 1);
    long bad = join_workers(w, WORKERS);
    if (failed || bad) {
        fprintf(stderr, "fork_loop: %d children failed, %ld blocks overwritten in the parent\n", failed, bad);
        return 1;
    }
    printf("fork_loop ok\n");
    return 0;
}

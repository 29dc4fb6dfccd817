/* fork during heavy cross-thread free traffic, from a thread that takes part in it.
 *
 * WORKERS threads pass blocks round a ring of single-producer single-consumer queues: each
 * allocates blocks (small, medium, large, now and then huge), stamps them with a cookie made
 * of their address and size, and sends them to the next thread, which checks and frees them.
 * Most frees are remote frees, many into pages their owner has parked as full (the delayed
 * path). A forker thread (not the main thread) takes part too, and forks FORKS times while
 * the traffic runs. In each child it is the only thread: it starts a ring of new threads,
 * which check and free every block that was in flight in the queues (blocks of heaps that
 * died with the fork), pass blocks round for a while and call mallinfo2 while all are alive;
 * then it ends with pthread_exit, so that its own heap goes through thread exit (which waits
 * out delayed frees in flight on its pages). A hung child is
 * killed by its alarm. Prints "fork_traffic ok". */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define WORKERS 4 /* plus the forker: RING threads in the parent's ring */
#define RING (WORKERS + 1)
#define QLEN 256
#define FORKS 30

struct queue {
    _Atomic(void *) slot[QLEN];
    _Atomic size_t size[QLEN];
    atomic_uint head, tail; /* producer writes tail, consumer head */
};
static struct queue q[RING];
static atomic_int stop;
static atomic_long bad_blocks;

static uintptr_t cookie(void *p, size_t n) { return ((uintptr_t)p * 0x9e3779b97f4a7c15u) ^ n; }

static void *make(size_t n) {
    unsigned char *p = malloc(n);
    if (!p) return NULL;
    uintptr_t c = cookie(p, n);
    memcpy(p, &c, sizeof c);
    memcpy(p + n - sizeof c, &c, sizeof c);
    return p;
}

static void check_free(void *p, size_t n) {
    uintptr_t c = cookie(p, n), a, b;
    memcpy(&a, p, sizeof a);
    memcpy(&b, (unsigned char *)p + n - sizeof b, sizeof b);
    if (a != c || b != c) atomic_fetch_add(&bad_blocks, 1);
    free(p);
}

static size_t pick(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    unsigned r = *s >> 8;
    if (r % 500 == 0) return (size_t)(3u << 20) + r % 100000; /* huge */
    if (r % 50 == 0) return 70000 + r % 400000;               /* large */
    if (r % 8 == 0) return 1100 + r % 30000;                  /* medium */
    return 16 + r % 500;                                      /* small */
}

/* One step of ring member i: send a new block to i + 1, take one from i - 1. */
static void step(int i, int ring, unsigned *s) {
    struct queue *out = &q[(i + 1) % ring], *in = &q[i];
    unsigned t = atomic_load_explicit(&out->tail, memory_order_relaxed);
    if (t - atomic_load_explicit(&out->head, memory_order_acquire) < QLEN) {
        size_t n = pick(s);
        void *p = make(n);
        if (p) {
            atomic_store_explicit(&out->size[t % QLEN], n, memory_order_relaxed);
            atomic_store_explicit(&out->slot[t % QLEN], p, memory_order_relaxed);
            atomic_store_explicit(&out->tail, t + 1, memory_order_release);
        }
    }
    unsigned h = atomic_load_explicit(&in->head, memory_order_relaxed);
    if (h != atomic_load_explicit(&in->tail, memory_order_acquire)) {
        void *p = atomic_load_explicit(&in->slot[h % QLEN], memory_order_relaxed);
        size_t n = atomic_load_explicit(&in->size[h % QLEN], memory_order_relaxed);
        atomic_store_explicit(&in->head, h + 1, memory_order_release);
        check_free(p, n);
    }
}

/* Frees every block still in the queues (ring of `ring` members). */
static void drain(int ring) {
    for (int i = 0; i < ring; i++) {
        unsigned h = atomic_load(&q[i].head), t = atomic_load(&q[i].tail);
        for (; h != t; h++) check_free(atomic_load(&q[i].slot[h % QLEN]), atomic_load(&q[i].size[h % QLEN]));
        atomic_store(&q[i].head, h);
    }
}

struct member { int i, ring; long steps; };
static pthread_barrier_t cbar; /* the child's ring */

static void *member(void *arg) {
    struct member *m = arg;
    unsigned s = (unsigned)m->i * 2654435761u + 7;
    if (m->steps >= 0) {
        /* In the child: first free the blocks that were in flight in the parent's queues
         * (blocks of heaps that died with the fork), from threads that may well sit on those
         * heaps' stacks; then the queues start over. */
        for (int k = m->i; k < RING; k += m->ring) {
            unsigned h = atomic_load(&q[k].head), t = atomic_load(&q[k].tail);
            for (; h != t; h++) check_free(atomic_load(&q[k].slot[h % QLEN]), atomic_load(&q[k].size[h % QLEN]));
        }
        pthread_barrier_wait(&cbar);
        if (m->i == 0)
            for (int k = 0; k < RING; k++) atomic_store(&q[k].head, 0), atomic_store(&q[k].tail, 0);
        pthread_barrier_wait(&cbar);
    }
    for (long k = 0; m->steps < 0 ? !atomic_load(&stop) : k < m->steps; k++) step(m->i, m->ring, &s);
    if (m->steps >= 0) {
        /* Statistics while every thread of the ring is alive. */
        struct mallinfo2 mi = mallinfo2();
        if (mi.uordblks == 0 || mi.uordblks > mi.arena) atomic_fetch_add(&bad_blocks, 1000000);
        pthread_barrier_wait(&cbar);
    }
    return NULL;
}

static void child(void) {
    alarm(30);
    /* A ring of 3 threads, stepped a fixed number of times each. */
    pthread_barrier_init(&cbar, NULL, 3);
    pthread_t t[3];
    struct member m[3];
    for (int i = 0; i < 3; i++) {
        m[i] = (struct member){i, 3, 20000};
        if (pthread_create(&t[i], NULL, member, &m[i]) != 0) _exit(2);
    }
    for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
    drain(3);
    struct mallinfo2 mi = mallinfo2();
    if (atomic_load(&bad_blocks) != 0) _exit(3);
    if (mi.uordblks > mi.arena) _exit(4);
    pthread_exit(NULL); /* the last thread: the process exits with 0 after its heap's exit */
}

static void *forker(void *arg) {
    (void)arg;
    unsigned s = 99;
    int failed = 0;
    for (int k = 0; k < FORKS; k++) {
        for (int j = 0; j < 3000; j++) step(WORKERS, RING, &s);
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); failed++; break; }
        if (pid == 0) child();
        int st = 0;
        if (waitpid(pid, &st, 0) != pid) { perror("waitpid"); failed++; break; }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "child %d: %s %d\n", k, WIFEXITED(st) ? "exit" : "signal",
                    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
            failed++;
        }
    }
    /* Keep stepping until the workers stop, so that the ring never stalls on us. */
    atomic_store(&stop, 1);
    return (void *)(intptr_t)failed;
}

int main(void) {
    pthread_t t[WORKERS], f;
    struct member m[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        m[i] = (struct member){i, RING, -1};
        pthread_create(&t[i], NULL, member, &m[i]);
    }
    pthread_create(&f, NULL, forker, NULL);
    void *failed;
    pthread_join(f, &failed);
    for (int i = 0; i < WORKERS; i++) pthread_join(t[i], NULL);
    drain(RING);
    if (failed || atomic_load(&bad_blocks)) {
        fprintf(stderr, "%ld failed children, %ld bad blocks\n", (long)(intptr_t)failed,
                atomic_load(&bad_blocks));
        return 1;
    }
    printf("fork_traffic ok\n");
    return 0;
}

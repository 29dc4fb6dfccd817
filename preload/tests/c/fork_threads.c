/* fork with threads alive in the parent, then threads in the child.
 *
 * The parent starts THREADS threads; each allocates blocks of many sizes (keeping them, so
 * that its segments hold live blocks), hands some to the others, and then waits, alive,
 * while the main thread forks. In the child only the main thread exists; glibc hands the dead
 * threads' stacks (and the TLS blocks on them, where the allocator keeps its per-thread heaps)
 * to the threads the child creates. Each child thread checks and frees the blocks one parent
 * thread left (blocks of a heap that no longer exists), allocates its own, frees blocks of the
 * other child threads, and calls malloc_stats and mallinfo2; the child's main thread then
 * checks every block it kept and calls them again. A child that hangs is killed by its alarm;
 * the parent reports any child that did not exit 0. Prints "fork_threads ok". */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define THREADS 4
#define KEEP 2000
#define ROUNDS 6

/* Blocks each parent thread allocated, by thread; written before the barrier. */
static unsigned char *kept[THREADS][KEEP];
static size_t kept_len[THREADS][KEEP];
static pthread_barrier_t ready, done;    /* the parent's */
static pthread_barrier_t cready, cdone;  /* the child's */

static size_t size_of(unsigned t, unsigned i) {
    unsigned s = (t * 7919u + i * 104729u) % 1000;
    if (i % 97 == 0) return 20000 + s * 40;   /* large */
    if (i % 13 == 0) return 1025 + s * 9;     /* medium */
    return 1 + s % 400;                        /* small */
}

static unsigned char *fill(size_t n, unsigned tag) {
    unsigned char *p = malloc(n);
    if (p) memset(p, (int)(tag & 0xff), n);
    return p;
}

static int check(const unsigned char *p, size_t n, unsigned tag) {
    for (size_t k = 0; k < n; k += 61)
        if (p[k] != (unsigned char)(tag & 0xff)) return 0;
    return p[n - 1] == (unsigned char)(tag & 0xff);
}

static void *parent_thread(void *arg) {
    unsigned t = (unsigned)(uintptr_t)arg;
    for (unsigned i = 0; i < KEEP; i++) {
        kept_len[t][i] = size_of(t, i);
        kept[t][i] = fill(kept_len[t][i], t * 31 + i);
        /* Churn: allocate and free too, so that pages fill, empty and go to the full list. */
        free(malloc(size_of(t, i + 1)));
    }
    pthread_barrier_wait(&ready);
    pthread_barrier_wait(&done); /* alive until the main thread has forked */
    return NULL;
}

/* ---- the child ---- */

static int child_failed;
static unsigned char *handoff[THREADS][KEEP];

static void stats_check(const char *who, int print) {
    struct mallinfo2 mi = mallinfo2();
    if (mi.uordblks == 0 || mi.arena < mi.uordblks) {
        fprintf(stderr, "%s: mallinfo2 arena %zu uordblks %zu\n", who, mi.arena, mi.uordblks);
        child_failed = 1;
    }
    if (print) malloc_stats();
}

static void *child_thread(void *arg) {
    unsigned t = (unsigned)(uintptr_t)arg;
    /* Blocks of the parent thread whose stack this thread may well be using. */
    for (unsigned i = 0; i < KEEP; i += 2) {
        if (!kept[t][i]) continue; /* a second generation: freed by the first */
        if (!check(kept[t][i], kept_len[t][i], t * 31 + i)) {
            fprintf(stderr, "child thread %u: parent block %u corrupt\n", t, i);
            child_failed = 1;
        }
        free(kept[t][i]);
        kept[t][i] = NULL;
    }
    for (int r = 0; r < ROUNDS; r++) {
        for (unsigned i = 0; i < KEEP; i++) {
            size_t n = size_of(t + 8, i + r);
            handoff[t][i] = fill(n, t * 17 + i + r);
            if (!handoff[t][i]) { child_failed = 1; return NULL; }
        }
        stats_check("child thread", r == 0);
        /* Free the previous thread's hand-off blocks of this round, once it has made them. */
        pthread_barrier_wait(&cready);
        unsigned o = (t + 1) % THREADS;
        for (unsigned i = 0; i < KEEP; i++) {
            size_t n = size_of(o + 8, i + r);
            if (!check(handoff[o][i], n, o * 17 + i + r)) {
                fprintf(stderr, "child thread %u: block %u of thread %u corrupt\n", t, i, o);
                child_failed = 1;
            }
            free(handoff[o][i]);
        }
        pthread_barrier_wait(&cdone);
    }
    return NULL;
}

static int child(void) {
    alarm(30);
    pthread_barrier_init(&cready, NULL, THREADS);
    pthread_barrier_init(&cdone, NULL, THREADS);
    pthread_t t[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, child_thread, (void *)i) != 0) return 2;
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    /* The rest of the parent threads' blocks, from the main thread. */
    for (unsigned k = 0; k < THREADS; k++)
        for (unsigned i = 1; i < KEEP; i += 2) {
            if (!check(kept[k][i], kept_len[k][i], k * 31 + i)) {
                fprintf(stderr, "child: parent block %u/%u corrupt\n", k, i);
                child_failed = 1;
            }
            free(kept[k][i]);
            kept[k][i] = NULL;
        }
    /* A second generation of threads, on the stacks the first left behind. */
    for (uintptr_t i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, child_thread, (void *)i) != 0) return 3;
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    stats_check("child main", 1);
    return child_failed ? 1 : 0;
}

int main(void) {
    pthread_barrier_init(&ready, NULL, THREADS + 1);
    pthread_barrier_init(&done, NULL, THREADS + 1);
    pthread_t t[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, parent_thread, (void *)i);
    pthread_barrier_wait(&ready);
    int bad = 0;
    for (int k = 0; k < 3; k++) {
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); return 1; }
        if (pid == 0) exit(child()); /* exit: the TIERALLOC_SHOW_STATS hook runs in the child too */
        int st = 0;
        if (waitpid(pid, &st, 0) != pid) { perror("waitpid"); return 1; }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "child %d: %s %d\n", k, WIFEXITED(st) ? "exit" : "signal",
                    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
            bad++;
        }
    }
    pthread_barrier_wait(&done);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    for (unsigned k = 0; k < THREADS; k++)
        for (unsigned i = 0; i < KEEP; i++) {
            if (!check(kept[k][i], kept_len[k][i], k * 31 + i)) bad++;
            free(kept[k][i]);
        }
    if (bad) return 1;
    printf("fork_threads ok\n");
    return 0;
}

/* fork from a multi-threaded parent: 4 threads allocate and free (also each other's blocks)
 * in loops while the main thread forks repeatedly; each child allocates and frees (small,
 * large, huge, blocks the parent's threads owned, and from a new thread) and exits 0. A child
 * that deadlocks is killed by its alarm. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define THREADS 4
#define SLOTS 512
static _Atomic(void *) shared[SLOTS];
static atomic_int stop;

static void *worker(void *arg) {
    unsigned s = (unsigned)(size_t)arg * 2654435761u + 1;
    void *local[64] = {0};
    while (!atomic_load(&stop)) {
        s = s * 1103515245u + 12345u;
        size_t n = (s >> 8) % 3 == 0 ? (s >> 4) % 200000 : (s >> 4) % 512;
        unsigned i = (s >> 16) % 64;
        free(local[i]);
        local[i] = malloc(n + 1);
        if (local[i]) memset(local[i], (int)i, n + 1);
        /* swap into the shared array: frees of other threads' blocks */
        unsigned j = (s >> 20) % SLOTS;
        void *mine = malloc((s >> 3) % 300 + 1);
        void *old = atomic_exchange(&shared[j], mine);
        free(old);
    }
    for (int i = 0; i < 64; i++) free(local[i]);
    return NULL;
}

static void *child_thread(void *arg) {
    (void)arg;
    for (int i = 0; i < 1000; i++) free(malloc((size_t)i * 37 + 1));
    return NULL;
}

static int child(void) {
    alarm(20);
    void *keep[256];
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < 256; i++) {
            size_t n = (size_t)(i * 97 + round) % 70000 + 1;
            keep[i] = malloc(n);
            if (!keep[i]) return 2;
            memset(keep[i], i, n);
        }
        for (int i = 0; i < 256; i++) free(keep[i]);
    }
    void *big = malloc(8 << 20);
    if (!big) return 3;
    memset(big, 1, 8 << 20);
    free(big);
    for (int j = 0; j < SLOTS; j++) free(atomic_exchange(&shared[j], NULL));
    pthread_t t;
    if (pthread_create(&t, NULL, child_thread, NULL) != 0) return 4;
    pthread_join(t, NULL);
    char *s = strdup("child");
    if (!s || strcmp(s, "child") != 0) return 5;
    free(s);
    return 0;
}

int main(void) {
    pthread_t t[THREADS];
    for (size_t i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    int bad = 0;
    for (int k = 0; k < 60; k++) {
        usleep(2000);
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); return 1; }
        if (pid == 0) _exit(child());
        int st = 0;
        if (waitpid(pid, &st, 0) != pid) { perror("waitpid"); return 1; }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "child %d: %s %d\n", k, WIFEXITED(st) ? "exit" : "signal",
                    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
            bad++;
        }
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    for (int j = 0; j < SLOTS; j++) free(atomic_exchange(&shared[j], NULL));
    if (bad) return 1;
    printf("fork ok\n");
    return 0;
}

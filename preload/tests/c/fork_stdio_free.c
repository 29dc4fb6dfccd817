/* fork while a thread holding a stream's lock frees a block that needs one of tieralloc's
 * locks, and another thread in fflush(NULL) (holding glibc's stream list lock) waits for
 * that stream (review rev52). The block is one a thread left at its exit: its segment is
 * abandoned, and the free adopts it (a claim, under the abandoned lists' lock). glibc's fork
 * takes the stream list lock after the prepare handlers; were tieralloc's to take its locks
 * without taking the list lock first, the fork would wait for the flusher, the flusher for
 * the stream, and the freer for tieralloc's lock. The steps are ordered by sleeps (a free
 * that comes too early passes: this never fails when the fork is sound). The alarm ends a
 * hung run. Prints "fork_stdio_free ok". */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 5

static FILE *f;
static void *left;
static atomic_int step;

static void pause_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static void wait_step(int s) {
    while (atomic_load(&step) < s) pause_ms(1);
}

/* Allocates a block and exits with it live: its segment is abandoned. */
static void *leaver(void *arg) {
    (void)arg;
    left = malloc(64);
    if (left) memset(left, 7, 64);
    return NULL;
}

/* Holds the stream's lock (as getline does while it reallocs), and while the fork is
 * under way frees the block the leaver left. Its heap takes its segment before the leaver
 * exits, so that it has room and does not adopt the leaver's at an allocation. */
static void *freer(void *arg) {
    (void)arg;
    free(malloc(16));
    atomic_store(&step, 1);
    wait_step(2); /* the leaver has exited */
    flockfile(f);
    atomic_store(&step, 3);
    wait_step(5);
    pause_ms(200); /* the fork's prepare handlers have run */
    free(left);
    funlockfile(f);
    return NULL;
}

/* Takes glibc's stream list lock, then waits for the freer's stream. */
static void *flusher(void *arg) {
    (void)arg;
    wait_step(3);
    atomic_store(&step, 4);
    fflush(NULL);
    return NULL;
}

int main(void) {
    alarm(30);
    f = tmpfile();
    if (!f) return 10;
    free(malloc(16)); /* this thread's heap is up */
    for (int r = 0; r < ROUNDS; r++) {
        pthread_t l, fr, fl;
        atomic_store(&step, 0);
        if (pthread_create(&fr, NULL, freer, NULL) != 0) return 11;
        if (pthread_create(&fl, NULL, flusher, NULL) != 0) return 11;
        wait_step(1);
        if (pthread_create(&l, NULL, leaver, NULL) != 0) return 11;
        pthread_join(l, NULL);
        if (!left) return 12;
        atomic_store(&step, 2);
        wait_step(4);
        pause_ms(100); /* the flusher holds the list lock and waits for the stream */
        atomic_store(&step, 5);
        pid_t pid = fork();
        if (pid < 0) return 13;
        if (pid == 0) _exit(0);
        int st;
        if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) return 14;
        pthread_join(fr, NULL);
        pthread_join(fl, NULL);
    }
    fclose(f);
    printf("fork_stdio_free ok\n");
    return 0;
}

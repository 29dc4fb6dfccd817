/* A program whose main thread ends with pthread_exit while the background purger runs
 * (TIERALLOC_BACKGROUND_PURGE=1, set by the test): the process must end when its last thread
 * of its own does, with status 0, its atexit handlers run and stdout flushed (POSIX: as if
 * exit(0) were called), whatever tieralloc's purger thread is doing. Review rev40: the purger
 * thread, an ordinary thread that never ends, kept the process alive for good
 * (fork_traffic.c's children, which end the same way, hung under TIERALLOC_PURGE_DELAY_MS=1
 * and the purger).
 *
 * With an argument N, the main thread also has a thread-specific data destructor of the
 * program's own that takes N seconds (a log flushed at thread exit, say). glibc runs key
 * destructors in the order the keys were made, so tieralloc's (made at the first malloc) runs
 * first and tells the purger the main thread is ending, and this one after it, before the main
 * thread is a zombie. Review rev43: the purger looked for the zombie main thread 100 times
 * 10 ms apart after the note and then, the main thread not yet a zombie, slept until woken,
 * which nothing did: the process ran on for good, and as the purger blocks every signal,
 * SIGTERM stayed pending: only SIGKILL ended it.
 *
 * The atexit handler runs on whichever thread ends the process, so it checks what any
 * program's handler may take for granted on the last thread: the program's signal mask (main
 * blocks SIGUSR2 at its start, so every thread it makes has it blocked and SIGTERM not), a
 * stack as deep as a thread's default (it writes 1 MiB of its own frame, one byte per 4 KiB
 * from the top down), and malloc and free. Review of the purger's exit (after rev43): the
 * purger ran exit(0) on its own 128 KiB stack with every signal blocked, so the handler
 * faulted past the stack's end (status 139), and with a shallower handler saw SIGTERM blocked.
 *
 * With the argument "handler", the frees that start the purger run in a SIGUSR1 handler (the
 * program's first frees; raised by `raise`, so a synchronous call), where SIGUSR1 is blocked:
 * the atexit handler checks SIGUSR1 too. Review rev47: the mask put on for exit was that of
 * the purger's start, SIGUSR1 blocked.
 *
 * First frees enough memory that some waits to be purged, so that the purger starts, and
 * checks that its thread ("tieralloc-purge") is there: without it the test would show
 * nothing. Prints "main_pthread_exit ok" (flushed), then ends its main thread; "atexit ran,
 * as main" from the atexit handler if its checks hold (not flushed: exit must do it). */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "purger_thread.h"

static unsigned slow_seconds;

static void slow_destructor(void *arg) {
    (void)arg;
    sleep(slow_seconds);
}

/* Writes `n` bytes of its own frame, one byte per 4 KiB from the top down (as a stack probe
 * would), so a stack shallower than that faults here rather than in another mapping. */
static __attribute__((noinline)) int deep(size_t n) {
    volatile char frame[1 << 20];
    for (size_t i = n; i > 0; i -= 4096 < i ? 4096 : i) frame[i - 1] = (char)i;
    return frame[0] + frame[n - 1];
}

static void at_exit(void) {
    sigset_t now;
    int mask_ok = pthread_sigmask(SIG_BLOCK, NULL, &now) == 0 && sigismember(&now, SIGUSR2) == 1 &&
                  sigismember(&now, SIGTERM) == 0 && sigismember(&now, SIGINT) == 0 &&
                  sigismember(&now, SIGUSR1) == 0;
    int stack_ok = deep(1 << 20) >= -256;
    char *p = malloc(5000), *q = malloc(40);
    int heap_ok = p && q;
    if (heap_ok) memset(p, 2, 5000), memset(q, 3, 40);
    free(p);
    free(q);
    printf("atexit ran%s%s\n", mask_ok && stack_ok && heap_ok ? ", as main" : "",
           mask_ok ? "" : ", signal mask not the program's");
}

/* Starts the purger: whether its thread is there after up to 10 s (purger_thread.h). */
static int start_purger(void) { return start_purger_rounds(1000, 1); }

static volatile sig_atomic_t started_in_handler;

static void on_usr1(int sig) {
    (void)sig;
    started_in_handler = start_purger();
}

int main(int argc, char **argv) {
    int in_handler = argc > 1 && strcmp(argv[1], "handler") == 0;
    slow_seconds = argc > 1 && !in_handler ? (unsigned)atoi(argv[1]) : 0;
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    if (pthread_sigmask(SIG_BLOCK, &usr2, NULL) != 0) {
        printf("pthread_sigmask failed\n");
        return 4;
    }
    int started;
    if (in_handler) {
        signal(SIGUSR1, on_usr1);
        raise(SIGUSR1);
        started = started_in_handler;
    } else {
        started = start_purger();
    }
    if (!started) {
        printf("the purger thread did not start\n");
        return 2;
    }
    if (slow_seconds) {
        pthread_key_t key;
        if (pthread_key_create(&key, slow_destructor) != 0 || pthread_setspecific(key, &key) != 0) {
            printf("pthread_key_create failed\n");
            return 3;
        }
    }
    atexit(at_exit);
    printf("main_pthread_exit ok\n");
    fflush(stdout);
    pthread_exit(NULL);
}

/* A program whose main thread ends with pthread_exit while the background purger runs
 * (TIERALLOC_BACKGROUND_PURGE=1, set by the test), and whose atexit handler itself ends its
 * thread with pthread_exit. Under glibc that thread is the process's last, and its end ends
 * the process (status 0, no more handlers, stdio not flushed again). Review rev47: once the
 * purger's exit(0) ran on a thread of its own, the purger waited for that thread to end the
 * process, and it never did: the process ran on with every signal blocked (only SIGKILL
 * ended it).
 *
 * Frees enough memory that some waits to be purged and checks that the purger's thread
 * ("tieralloc-purge") is there; the handler prints "atexit_pthread_exit ok" (flushed). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "purger_thread.h"

static void at_exit(void) {
    printf("atexit_pthread_exit ok\n");
    fflush(stdout);
    pthread_exit(NULL);
}

int main(void) {
    int started = start_purger_rounds(1000, 1);
    if (!started) {
        printf("the purger thread did not start\n");
        return 2;
    }
    atexit(at_exit);
    pthread_exit(NULL);
}

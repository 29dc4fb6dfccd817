/* A program whose main thread ends with pthread_exit while the background purger runs, and
 * whose own thread-specific data destructor on the main thread takes a while (3 s: a log
 * flushed at thread exit, say). glibc runs key destructors in the order the keys were made,
 * so tieralloc's (made at the first malloc) runs first and tells the purger that a thread is
 * ending, and this one runs after it, before the main thread is a zombie. The process must
 * still end, with status 0, its atexit handlers run and stdout flushed (POSIX: as if exit(0)
 * were called). Review rev43: the purger looked for the zombie main thread 100 times 10 ms
 * apart after the note and then, the main thread not yet a zombie, slept until woken, which
 * nothing did: the process ran on for good (killed by the hang guard), a zombie main thread
 * and the purger, which blocks every signal, so SIGTERM stayed pending: only SIGKILL ended it.
 * Run with TIERALLOC_PURGE_DELAY_MS=1 (set by the test).
 *
 * Prints "main_pthread_exit_slow_tsd ok" (flushed) before it ends its main thread, and
 * "atexit ran" from an atexit handler (not flushed: exit must do it). */
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *volatile sink;

/* Whether a thread of this process is named `name`. */
static int has_thread(const char *name) {
    DIR *d = opendir("/proc/self/task");
    if (!d) return 0;
    struct dirent *e;
    int found = 0;
    while (!found && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[300], comm[64] = {0};
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        if (fgets(comm, sizeof comm, f) && strncmp(comm, name, strlen(name)) == 0) found = 1;
        fclose(f);
    }
    closedir(d);
    return found;
}

static void slow_destructor(void *arg) {
    (void)arg;
    sleep(3);
}

static void at_exit(void) { printf("atexit ran\n"); }

int main(void) {
    /* Wait up to 10 s for the purger (a hang guard, not a measurement). */
    int started = 0;
    for (int round = 0; round < 1000 && !started; round++) {
        for (int i = 0; i < 16; i++) {
            char *p = malloc(300 << 10);
            memset(p, 1, 300 << 10);
            sink = p;
            free(p);
        }
        for (int i = 0; i < 1000; i++) {
            sink = malloc(100);
            free(sink);
        }
        started = has_thread("tieralloc-purge");
        if (!started) usleep(10000);
    }
    if (!started) {
        printf("the purger thread did not start\n");
        return 2;
    }
    pthread_key_t key;
    if (pthread_key_create(&key, slow_destructor) != 0 || pthread_setspecific(key, &key) != 0) {
        printf("pthread_key_create failed\n");
        return 3;
    }
    atexit(at_exit);
    printf("main_pthread_exit_slow_tsd ok\n");
    fflush(stdout);
    pthread_exit(NULL);
}

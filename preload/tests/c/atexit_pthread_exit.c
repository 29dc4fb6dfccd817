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

static void at_exit(void) {
    printf("atexit_pthread_exit ok\n");
    fflush(stdout);
    pthread_exit(NULL);
}

int main(void) {
    int started = 0;
    for (int round = 0; round < 1000 && !started; round++) {
        for (int i = 0; i < 16; i++) {
            char *p = malloc(300 << 10);
            memset(p, 1, 300 << 10);
            sink = p;
            free(p);
        }
        started = has_thread("tieralloc-purge");
        if (!started) usleep(10000);
    }
    if (!started) {
        printf("the purger thread did not start\n");
        return 2;
    }
    atexit(at_exit);
    pthread_exit(NULL);
}

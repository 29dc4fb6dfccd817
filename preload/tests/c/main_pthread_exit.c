/* A program whose main thread ends with pthread_exit while the background purger runs
 * (TIERALLOC_BACKGROUND_PURGE=1, set by the test): the process must end when its last thread
 * of its own does, with status 0 (POSIX: as if exit(0) were called), whatever tieralloc's
 * purger thread is doing. Review rev40: the purger thread, an ordinary thread that never
 * ends, kept the process alive for good (fork_traffic.c's children, which end the same way,
 * hung under TIERALLOC_PURGE_DELAY_MS=1 and the purger).
 *
 * First frees enough memory that some waits to be purged, so that the purger starts, and
 * checks that its thread ("tieralloc-purge") is there: without it the test would show
 * nothing. Prints "main_pthread_exit ok", then ends its main thread. */
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

int main(void) {
    /* Wait up to 10 s for the purger (a hang guard, not a measurement): it starts when
     * memory first waits to be purged, which these frees make happen. */
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
    printf("main_pthread_exit ok\n");
    fflush(stdout);
    pthread_exit(NULL);
}

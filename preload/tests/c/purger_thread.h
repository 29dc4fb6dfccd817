/* For the C programs that need tieralloc's background purger running
 * (TIERALLOC_BACKGROUND_PURGE=1, set by their tests): whether its thread ("tieralloc-purge")
 * is there, and a loop that makes it start. Included by main_pthread_exit.c,
 * atexit_pthread_exit.c and purger_rlimit_as.c. */
#ifndef PURGER_THREAD_H
#define PURGER_THREAD_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *volatile purger_sink;

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

/* Frees memory so that some waits to be purged, which starts the purger: each round 1000
 * blocks of 100 B and, with `big`, 16 of 300 KiB (written); whether the purger's thread is
 * there within `rounds` rounds 10 ms apart (a hang guard, not a measurement). */
static int start_purger_rounds(int rounds, int big) {
    int started = 0;
    for (int round = 0; round < rounds && !started; round++) {
        for (int i = 0; big && i < 16; i++) {
            char *p = malloc(300 << 10);
            if (p) memset(p, 1, 300 << 10);
            purger_sink = p;
            free(p);
        }
        for (int i = 0; i < 1000; i++) {
            purger_sink = malloc(100);
            free(purger_sink);
        }
        started = has_thread("tieralloc-purge");
        if (!started) usleep(10000);
    }
    return started;
}

#endif

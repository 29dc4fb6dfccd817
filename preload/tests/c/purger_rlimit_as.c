/* The background purger (TIERALLOC_BACKGROUND_PURGE=1, set by the test) starts in a program
 * under an address-space cap (RLIMIT_AS) with a few MiB of room left: its thread's stack is
 * all it maps. Review rev47: since its thread had a new thread's default stack (RLIMIT_STACK,
 * 8 MiB), pthread_create failed with up to 8 MiB of room, and the purger never ran (128 KiB
 * before: it started with 2 MiB of room).
 *
 * Keeps 16 blocks of 300 KiB, caps the address space at what it uses plus half a default
 * thread stack (at least 2 MiB), frees the blocks (memory now waits to be purged, which starts
 * the purger) and allocates on for up to 2 s until the purger's thread ("tieralloc-purge")
 * is there. Prints "purger_rlimit_as ok". */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "purger_thread.h"

static long vm_size_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmSize:", 7) == 0) kb = atol(line + 7);
    fclose(f);
    return kb;
}

int main(void) {
    void *keep[16];
    for (int i = 0; i < 16; i++) {
        keep[i] = malloc(300 << 10);
        memset(keep[i], 1, 300 << 10);
    }
    if (has_thread("tieralloc-purge")) {
        printf("the purger started before the cap\n");
        return 1;
    }
    pthread_attr_t attr;
    size_t stack = 0;
    if (pthread_getattr_default_np(&attr) != 0 || pthread_attr_getstacksize(&attr, &stack) != 0) {
        printf("no default thread attributes\n");
        return 1;
    }
    size_t room_kb = stack / 2048 > 2048 ? stack / 2048 : 2048;
    long vm = vm_size_kb();
    if (vm < 0) {
        printf("no VmSize\n");
        return 1;
    }
    struct rlimit cap = {((size_t)vm + room_kb) << 10, ((size_t)vm + room_kb) << 10};
    if (setrlimit(RLIMIT_AS, &cap) != 0) {
        printf("setrlimit failed\n");
        return 1;
    }
    for (int i = 0; i < 16; i++) free(keep[i]);
    /* Small blocks only: the cap leaves no room for big ones. */
    int started = start_purger_rounds(200, 0);
    if (!started) {
        printf("the purger did not start with %zu KiB of address space left (default thread "
               "stack %zu KiB)\n", room_kb, stack >> 10);
        return 1;
    }
    printf("purger_rlimit_as ok\n");
    return 0;
}

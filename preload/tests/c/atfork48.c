/* A library whose constructor registers 48 fork handlers, filling glibc's table (the first
 * 48 live inside libc, the 49th mallocs). Preloaded after the drop-in (LD_PRELOAD="drop-in
 * this"), its constructor runs before the drop-in's, so the drop-in's first allocation, which
 * initialises tieralloc, registers the 49th handler: pthread_atfork mallocs, re-entering
 * tieralloc while it sets up the thread's heap (tests/init_reentry.rs). */
#include <pthread.h>

static void nop(void) {}

__attribute__((constructor)) static void fill_the_atfork_table(void) {
    for (int i = 0; i < 48; i++)
        pthread_atfork(nop, nop, nop);
}

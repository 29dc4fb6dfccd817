/* The drop-in's first allocation runs tieralloc's initialisation, which registers its fork
 * handlers with pthread_atfork. glibc keeps the first 48 handlers in a table inside libc
 * (2.28 and later) and mallocs when a 49th comes: so when a program has registered 48
 * before its first malloc, that registration allocates, re-entering tieralloc in the middle
 * of setting up the thread's heap. The heap used to be linked into the registry twice (a
 * loop): malloc_stats, mallinfo2 and every thread start or exit then spun forever.
 * (A program whose own 49th registration was its first malloc deadlocked inside glibc,
 * which holds its atfork lock while it allocates; since review rev13 the drop-in's
 * constructor initialises tieralloc before the program runs, and with it this program's 48
 * registrations come after tieralloc's: tests/init_reentry.rs preloads atfork48.c's library
 * after the drop-in, whose constructor registers 48 before the drop-in's runs, so that the
 * initialisation's own registration allocates.) */
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void nop(void) {}

static void *worker(void *arg) {
    char *p = malloc(64);
    strcpy(p, "worker");
    free(p);
    return arg;
}

int main(void) {
    for (int i = 0; i < 48; i++)
        pthread_atfork(nop, nop, nop);
    char *p = malloc(100);
    if (!p) return 1;
    strcpy(p, "first");
    pthread_t t;
    if (pthread_create(&t, NULL, worker, NULL) != 0) return 2;
    pthread_join(t, NULL);
    struct mallinfo2 m = mallinfo2();
    malloc_stats();
    free(p);
    printf("init_atfork ok %d\n", m.uordblks > 0);
    return 0;
}

/* Fork handlers of the program that allocate (review rev13). glibc runs the prepare handlers
 * last-registered first and the parent and child handlers first-registered first, and its own
 * malloc takes its locks after every prepare handler and lets go of them before any parent or
 * child handler: a handler may allocate. tieralloc registered its handlers at its first
 * allocation, so a handler registered before that (here: in main before any malloc; in a real
 * program, a library's constructor) ran after tieralloc's prepare, which holds every segment
 * list's lock, and before its parent and child handlers, which let go of them. A handler that
 * needed a new segment then spun forever on a lock its own thread held.
 *
 * Argument: which handler allocates (prepare, parent or child). Each allocates 60 blocks of
 * 100 000 bytes (two 64 KiB slices each, 120 slices: more than a segment holds), so that it
 * needs segments from the pool or the OS. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define BLOCKS 60
#define SIZE 100000

static const char *which;
static void *held[BLOCKS];

static void grab(int fill) {
    for (int i = 0; i < BLOCKS; i++) {
        held[i] = malloc(SIZE);
        if (!held[i]) _exit(11);
        memset(held[i], fill, SIZE);
    }
}

static void let_go(int fill) {
    for (int i = 0; i < BLOCKS; i++) {
        const unsigned char *p = held[i];
        if (p[0] != fill || p[SIZE - 1] != fill) _exit(12);
        free(held[i]);
    }
}

static void prepare(void) {
    if (strcmp(which, "prepare") == 0) grab(1);
}

static void parent(void) {
    if (strcmp(which, "prepare") == 0) let_go(1);
    if (strcmp(which, "parent") == 0) {
        grab(2);
        let_go(2);
    }
}

static void child(void) {
    if (strcmp(which, "prepare") == 0) let_go(1);
    if (strcmp(which, "child") == 0) {
        grab(3);
        let_go(3);
    }
}

static void *worker(void *arg) {
    for (int i = 0; i < 1000; i++) free(malloc(100 + i));
    return arg;
}

int main(int argc, char **argv) {
    which = argc > 1 ? argv[1] : "prepare";
    /* Before the program's first allocation, as a library's constructor would. */
    if (pthread_atfork(prepare, parent, child) != 0) return 2;
    pthread_t t;
    if (pthread_create(&t, NULL, worker, NULL) != 0) return 3;
    pthread_join(t, NULL);
    char *keep = malloc(1000);
    strcpy(keep, "kept");
    pid_t pid = fork();
    if (pid < 0) return 4;
    if (pid == 0) {
        char *q = malloc(5000);
        free(q);
        _exit(strcmp(keep, "kept") == 0 ? 0 : 5);
    }
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "child failed: status %d\n", st);
        return 6;
    }
    free(keep);
    printf("atfork_handlers %s ok\n", which);
    return 0;
}

/* Shared by the fork suite's C programs that fork in a loop (fork_loop.c, fork_slowpaths.c):
 * the wait for one child and the report of one that did not exit 0, and the join of the
 * parent's workers. */
#ifndef FORK_CHILD_H
#define FORK_CHILD_H
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <sys/wait.h>

/* Waits for child `pid` of fork number `k`: 1 if it exited 0; otherwise says on stderr how it
 * ended and returns 0. */
static int child_ok(pid_t pid, int k) {
    int st;
    if (waitpid(pid, &st, 0) != pid) {
        fprintf(stderr, "fork %d: waitpid failed\n", k);
        return 0;
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return 1;
    fprintf(stderr, "fork %d: child %s %d\n", k, WIFEXITED(st) ? "exited" : "killed by signal",
            WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
    return 0;
}

/* Joins the `n` workers in `w`; returns the sum of what they returned (each, the count of
 * its blocks found overwritten). */
static long join_workers(const pthread_t *w, int n) {
    long bad = 0;
    for (int i = 0; i < n; i++) {
        void *r;
        pthread_join(w[i], &r);
        bad += (long)(intptr_t)r;
    }
    return bad;
}
#endif

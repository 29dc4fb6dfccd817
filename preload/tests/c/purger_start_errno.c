/* free() leaves errno alone also when it is the call that starts the background purger
 * (TIERALLOC_BACKGROUND_PURGE=1, set by the test) and the thread cannot be made: a seccomp
 * filter (or RLIMIT_NPROC, or RLIMIT_AS against the thread's stack) refuses clone, so
 * pthread_create fails, and its EAGAIN reached the caller's errno (review rev47).
 *
 * A thread fills pages with small blocks and waits; the main thread then forbids new threads
 * for the whole process (seccomp, SECCOMP_FILTER_FLAG_TSYNC: clone and clone3 fail with
 * EAGAIN) and frees the blocks: its frees into the quiet owner's full pages are the first
 * thing that waits to be purged, so one of them tries to start the purger. errno is set to a
 * mark before every free and checked after it. Prints "purger_start_errno ok". */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define N 20000
#define MARK 4242
static void *blocks[N];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int stage;

/* clone and clone3 fail with EAGAIN in every thread of the process from now on. */
static int forbid_threads(void) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone3, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EAGAIN),
    };
    struct sock_fprog prog = {sizeof f / sizeof *f, f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog);
}

static void set_stage(int s) {
    pthread_mutex_lock(&mu);
    stage = s;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

static void wait_stage(int s) {
    pthread_mutex_lock(&mu);
    while (stage < s) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
}

static void *owner(void *arg) {
    (void)arg;
    for (int i = 0; i < N; i++) {
        blocks[i] = malloc(48);
        memset(blocks[i], 1, 48);
    }
    set_stage(1);
    wait_stage(2);
    return NULL;
}

int main(void) {
    pthread_t t;
    if (pthread_create(&t, NULL, owner, NULL) != 0) {
        printf("pthread_create failed\n");
        return 1;
    }
    wait_stage(1);
    if (forbid_threads() != 0) {
        perror("seccomp");
        return 1;
    }
    pthread_t u;
    if (pthread_create(&u, NULL, owner, NULL) == 0) {
        printf("the filter let a thread be made\n");
        return 1;
    }
    int bad = 0;
    for (int i = 0; i < N; i++) {
        errno = MARK;
        free(blocks[i]);
        if (errno != MARK && bad++ < 5)
            printf("free of block %d set errno to %d (%s)\n", i, errno, strerror(errno));
    }
    set_stage(2);
    pthread_join(t, NULL);
    if (bad) {
        printf("%d frees changed errno\n", bad);
        return 1;
    }
    printf("purger_start_errno ok\n");
    return 0;
}

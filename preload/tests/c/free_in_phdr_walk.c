/* A free of a pointer outside every tieralloc segment (mmap'ed memory: both builds leave it
 * alone) from a dl_iterate_phdr callback, which holds the loader's dl_load_write_lock, while
 * another thread's dlopen holds dl_load_lock and waits for that lock. The free must not take
 * dl_load_lock (dladdr does): that is the opposite order, and both threads would hang.
 * The callback waits until the other thread is blocked in a futex wait (its dlopen waiting
 * for the lock the callback holds), read from /proc/self/task/TID/syscall, so that the free
 * always meets the held lock. Prints "survived" when both are through.
 * With "fork": a thread stays inside a dl_iterate_phdr callback while the main thread forks;
 * the child frees the mmap'ed pointer (a lock the walking thread held in the parent stays
 * held in the child: glibc resets dl_load_lock there, not dl_load_write_lock) and prints
 * "survived" if it gets through. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static void *volatile sink;
static volatile pid_t opener_tid;
static volatile int opener_done;

static void *open_lib(void *arg) {
    opener_tid = gettid();
    void *h = dlopen("libresolv.so.2", RTLD_NOW);
    if (h) dlclose(h);
    opener_done = 1;
    return arg;
}

/* Whether thread `tid` is blocked in the futex system call. */
static int in_futex(pid_t tid) {
    char path[64], buf[32] = {0};
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", (int)tid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
#if defined(__aarch64__)
    return !strncmp(buf, "98 ", 3);
#else
    return !strncmp(buf, "202 ", 4);
#endif
}

static pthread_t opener;

static int first_object(struct dl_phdr_info *info, size_t size, void *data) {
    (void)info;
    (void)size;
    int *first = data;
    if (!*first) return 0;
    *first = 0;
    if (pthread_create(&opener, NULL, open_lib, NULL) != 0) exit(2);
    while (!opener_tid) sched_yield();
    while (!opener_done && !in_futex(opener_tid)) sched_yield();
    free(sink);
    return 0;
}

static volatile int walking;

static int stay(struct dl_phdr_info *info, size_t size, void *data) {
    (void)info;
    (void)size;
    (void)data;
    walking = 1;
    for (;;) pause();
    return 0;
}

static void *walk_and_stay(void *arg) {
    dl_iterate_phdr(stay, NULL);
    return arg;
}

int main(int argc, char **argv) {
    sink = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (sink == MAP_FAILED) return 2;
    if (argc > 1 && !strcmp(argv[1], "fork")) {
        pthread_t t;
        if (pthread_create(&t, NULL, walk_and_stay, NULL) != 0) return 2;
        while (!walking) sched_yield();
        pid_t c = fork();
        if (c < 0) return 2;
        if (c == 0) {
            free(sink);
            _exit(0);
        }
        int st;
        if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0) return 3;
        puts("survived");
        fflush(stdout);
        _exit(0);
    }
    int first = 1;
    dl_iterate_phdr(first_object, &first);
    if (pthread_join(opener, NULL) != 0) return 2;
    puts("survived");
    return 0;
}

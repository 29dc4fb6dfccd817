/* fork, in a loop, while two threads read a 600 KiB line with getline (glibc grows the
 * line with realloc while it holds the stream's lock: large blocks, every one a slow path)
 * and a third calls fflush(NULL) (which holds glibc's stream list lock while it takes each
 * stream's lock in turn). glibc's fork takes the stream list lock after the program's
 * prepare handlers, tieralloc's among them (review rev50): were the allocator to hold up a
 * thread's slow path from its prepare handler on, with the list lock not yet taken, a reader
 * holding its stream's lock would wait for the fork, the flusher for the reader, and the
 * fork for the flusher. The alarm ends a hung run. Prints "fork_stdio ok". */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LINE (600 << 10)
#define SECONDS 5

static atomic_int stop;
static char path[64];

static void *reader(void *arg) {
    (void)arg;
    FILE *f = fopen(path, "r");
    if (!f) return (void *)-1;
    long n = 0;
    while (!atomic_load(&stop)) {
        char *line = NULL;
        size_t cap = 0;
        rewind(f);
        if (getline(&line, &cap, f) != LINE + 1) n = -1000000;
        free(line);
        n++;
    }
    fclose(f);
    return (void *)n;
}

static void *flusher(void *arg) {
    (void)arg;
    long n = 0;
    while (!atomic_load(&stop)) {
        fflush(NULL);
        n++;
    }
    return (void *)n;
}

int main(void) {
    alarm(40);
    snprintf(path, sizeof path, "/tmp/fork_stdio.%d", (int)getpid());
    FILE *w = fopen(path, "w");
    if (!w) return 10;
    for (int i = 0; i < LINE; i++) fputc('a' + i % 26, w);
    fputc('\n', w);
    fclose(w);
    pthread_t r[2], fl;
    for (int i = 0; i < 2; i++)
        if (pthread_create(&r[i], NULL, reader, NULL) != 0) return 11;
    if (pthread_create(&fl, NULL, flusher, NULL) != 0) return 11;
    int forks = 0;
    time_t end = time(NULL) + SECONDS;
    while (time(NULL) < end) {
        pid_t pid = fork();
        if (pid < 0) return 12;
        if (pid == 0) _exit(0);
        int st;
        if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) return 13;
        forks++;
    }
    atomic_store(&stop, 1);
    void *a, *b, *c;
    pthread_join(r[0], &a);
    pthread_join(r[1], &b);
    pthread_join(fl, &c);
    unlink(path);
    fprintf(stderr, "fork_stdio: %d forks, %ld lines read, %ld flushes\n", forks, (long)a + (long)b, (long)c);
    if ((long)a <= 0 || (long)b <= 0 || forks == 0) return 1;
    printf("fork_stdio ok\n");
    return 0;
}

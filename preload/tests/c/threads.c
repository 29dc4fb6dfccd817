/* Threads created and destroyed: joinable and detached threads allocate; blocks cross
 * threads (freed after their allocating thread has exited); a pthread key created after the
 * allocator's own has a destructor that allocates, runs after the allocator's thread-exit
 * hook, and must still get memory; C11 thread-locals with destructors are not needed in C,
 * so __thread data is touched instead. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static _Atomic(void *) handoff[64];
static atomic_int detached_done, key_dtor_ok, key_dtor_runs, free_first_ok;
static pthread_key_t late_key;
static __thread char tls_buf[4096];

static void late_dtor(void *v) {
    /* runs at thread exit, after tieralloc's own key destructor (it was created later) */
    free(v);
    void *p = malloc(100);
    char *s = strdup("destructor");
    if (p && s && strcmp(s, "destructor") == 0) atomic_fetch_add(&key_dtor_ok, 1);
    atomic_fetch_add(&key_dtor_runs, 1);
    free(p);
    free(s);
}

static void *worker(void *arg) {
    size_t id = (size_t)arg;
    memset(tls_buf, (int)id, sizeof tls_buf);
    pthread_setspecific(late_key, malloc(10));
    void *keep[100];
    for (int r = 0; r < 20; r++) {
        for (int i = 0; i < 100; i++) keep[i] = malloc((size_t)(i * 53 + r) % 5000 + 1);
        for (int i = 0; i < 100; i++) free(keep[i]);
    }
    /* leave a block for someone else to free after we are gone */
    void *old = atomic_exchange(&handoff[id % 64], malloc(id % 3000 + 1));
    free(old);
    return NULL;
}

/* A thread whose first call into the allocator is a free (of the main thread's block). */
static void *free_first(void *arg) {
    free(arg);
    char *q = malloc(64);
    char *r = calloc(8, 8);
    if (q && r && r[63] == 0) {
        memset(q, 7, 64);
        if (q[63] == 7) atomic_fetch_add(&free_first_ok, 1);
    }
    free(q);
    free(r);
    return NULL;
}

static void *detached(void *arg) {
    worker(arg);
    atomic_fetch_add(&detached_done, 1);
    return NULL;
}

int main(void) {
    free(malloc(1)); /* tieralloc's key exists before ours */
    if (pthread_key_create(&late_key, late_dtor) != 0) return 1;
    int joined = 0;
    for (int round = 0; round < 20; round++) {
        pthread_t t[8];
        for (size_t i = 0; i < 8; i++) pthread_create(&t[i], NULL, worker, (void *)(round * 8 + i));
        for (int i = 0; i < 8; i++) { pthread_join(t[i], NULL); joined++; }
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        pthread_t d;
        pthread_create(&d, &a, detached, (void *)(size_t)(1000 + round));
        pthread_attr_destroy(&a);
    }
    for (int i = 0; i < 8; i++) {
        pthread_t t;
        pthread_create(&t, NULL, free_first, malloc(100 + i * 1000));
        pthread_join(t, NULL);
    }
    if (atomic_load(&free_first_ok) != 8) {
        fprintf(stderr, "free-first threads: %d of 8 ok\n", atomic_load(&free_first_ok));
        return 1;
    }
    for (int w = 0; w < 500 && atomic_load(&detached_done) < 20; w++) usleep(10000);
    usleep(20000); /* let the last detached thread's destructors finish */
    for (int i = 0; i < 64; i++) free(atomic_exchange(&handoff[i], NULL));
    int runs = atomic_load(&key_dtor_runs), ok = atomic_load(&key_dtor_ok);
    if (atomic_load(&detached_done) != 20 || runs < joined || ok != runs) {
        fprintf(stderr, "detached %d, key destructors %d (%d got memory), joined %d\n",
                atomic_load(&detached_done), runs, ok, joined);
        return 1;
    }
    printf("threads ok\n");
    return 0;
}

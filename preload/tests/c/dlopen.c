/* dlopen from several threads at once, then dynamic TLS set-up in fresh threads. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static const char *lib;
static void *worker(void *arg) {
    (void)arg;
    void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!h) { fprintf(stderr, "dlopen: %s\n", dlerror()); return (void *)1; }
    int (*touch)(int) = (int (*)(int))dlsym(h, "tls_touch");
    if (!touch) return (void *)1;
    int sum = 0;
    for (int i = 1; i <= 100; i++) sum = touch(i);
    if (sum != 5050) return (void *)1;
    dlclose(h);
    return NULL;
}
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    lib = argv[1];
    for (int round = 0; round < 10; round++) {
        pthread_t t[4];
        for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, worker, NULL);
        for (int i = 0; i < 4; i++) {
            void *r;
            pthread_join(t[i], &r);
            if (r) return 1;
        }
    }
    printf("dlopen ok\n");
    return 0;
}

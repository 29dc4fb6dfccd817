/* One heap error per run, named by argv[1]; after it the program checks that the allocator
 * still hands out distinct, writable blocks, prints "survived" and exits 0. Under the drop-in's
 * default (TIERALLOC_ON_ERROR=abort) a caught error ends the run with SIGABRT before that
 * (preload/tests/heap_errors.rs says which are caught). Nothing is printed before the error,
 * so that stdio's buffer is not allocated in between. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *volatile sink;
static char static_buf[64];

static void *free_it(void *p) {
    free(p);
    return NULL;
}

static void *free_it_twice(void *p) {
    free(p);
    free(p);
    return NULL;
}

/* Frees p on a thread of its own (f: free_it or free_it_twice). */
static void on_thread(void *(*f)(void *), void *p) {
    pthread_t t;
    if (pthread_create(&t, NULL, f, p) != 0 || pthread_join(t, NULL) != 0) {
        fprintf(stderr, "pthread failed\n");
        exit(2);
    }
}

static int run(const char *c) {
    if (!strcmp(c, "double_free_immediate")) {
        char *p = malloc(64);
        free(p);
        free(p);
    } else if (!strcmp(c, "double_free_delayed")) {
        char *a = malloc(64), *b = malloc(64);
        free(a);
        free(b);
        free(a);
    } else if (!strcmp(c, "double_free_interleaved")) {
        char *a = malloc(48), *b = malloc(48), *d = malloc(48);
        free(a);
        free(b);
        free(a);
        free(d);
    } else if (!strcmp(c, "double_free_after_reuse")) {
        char *a = malloc(64);
        free(a);
        char *b = malloc(64); /* most allocators hand a back: b frees it again below */
        free(a);
        free(b);
    } else if (!strcmp(c, "double_free_with_live_neighbours")) {
        /* Other blocks of the size stay live: the page's count cannot tell. */
        char *keep[8];
        for (int i = 0; i < 8; i++) keep[i] = malloc(64);
        char *p = malloc(64);
        free(p);
        free(p);
        sink = keep;
    } else if (!strcmp(c, "double_free_other_thread")) {
        char *p = malloc(10000);
        on_thread(free_it_twice, p);
        /* What a long-running program does sooner or later: its allocator collects. */
        malloc_trim(0);
    } else if (!strcmp(c, "double_free_across_threads")) {
        char *p = malloc(64);
        on_thread(free_it, p);
        free(p);
    } else if (!strcmp(c, "free_interior")) {
        char *p = malloc(64);
        free(p + 16);
    } else if (!strcmp(c, "free_unaligned")) {
        char *p = malloc(64);
        free(p + 1);
    } else if (!strcmp(c, "free_unaligned_other_thread")) {
        char *p = malloc(64);
        on_thread(free_it, p + 1);
    } else if (!strcmp(c, "free_stack")) {
        char buf[64];
        sink = buf;
        free(sink);
    } else if (!strcmp(c, "free_static")) {
        free(static_buf);
    } else if (!strcmp(c, "double_free_large")) {
        char *p = malloc(256 << 10);
        free(p);
        free(p);
    } else if (!strcmp(c, "free_large_interior")) {
        char *p = malloc(256 << 10);
        free(p + 4096);
    } else if (!strcmp(c, "double_free_huge")) {
        char *p = malloc(8 << 20);
        free(p);
        free(p);
    } else if (!strcmp(c, "free_huge_interior")) {
        char *p = malloc(8 << 20);
        free(p + 4096);
    } else {
        fprintf(stderr, "unknown case %s\n", c);
        return 2;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    int r = run(argv[1]);
    if (r) return r;
    /* Still working: 200 blocks of mixed sizes, distinct and writable. */
    char *b[200];
    for (int i = 0; i < 200; i++) {
        size_t n = 16 + (size_t)(i * 37) % 5000;
        b[i] = malloc(n);
        memset(b[i], i, n);
    }
    for (int i = 0; i < 200; i++)
        for (int j = 0; j < i; j++)
            if (b[i] == b[j]) {
                fprintf(stderr, "block handed out twice\n");
                return 3;
            }
    for (int i = 0; i < 200; i++) free(b[i]);
    printf("survived\n");
    return 0;
}

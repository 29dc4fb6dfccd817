/* One heap error per run, named by argv[1]; after it the program checks that the allocator
 * still hands out distinct, writable blocks, prints "survived" and exits 0. Under the drop-in's
 * default (TIERALLOC_ON_ERROR=abort) a caught error ends the run with SIGABRT before that
 * (preload/tests/heap_errors.rs says which are caught; an overflow may also end it with
 * SIGSEGV). Nothing is printed before the error, so that stdio's buffer is not allocated in
 * between. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <malloc.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>

static void *volatile sink;
static char static_buf[64];

/* Two live 64-byte blocks, q right after p in memory (q - p is at most p's usable size plus
 * a header), found among 64 such blocks: an overflow of p runs into q, an underflow of q into
 * p, both live, so that the error meets the allocator's own data only where the allocator
 * keeps it next to a block (a header, a canary), never a free block's link, whatever order
 * the blocks come in. The other blocks stay live. */
static void adjacent_pair(char **p, char **q) {
    static char *b[64];
    for (int i = 0; i < 64; i++) b[i] = malloc(64);
    size_t best = (size_t)-1;
    for (int i = 0; i < 64; i++)
        for (int j = 0; j < 64; j++)
            if (b[j] > b[i] && (size_t)(b[j] - b[i]) < best) {
                best = (size_t)(b[j] - b[i]);
                *p = b[i];
                *q = b[j];
            }
    if (best > malloc_usable_size(*p) + 16) {
        fprintf(stderr, "no two adjacent blocks\n");
        exit(2);
    }
    sink = b;
}

static void *free_it(void *p) {
    free(p);
    return NULL;
}

static void *free_it_twice(void *p) {
    free(p);
    free(p);
    return NULL;
}

static void *free_own_stack(void *arg) {
    char buf[64];
    sink = buf;
    free(sink);
    return arg;
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
    } else if (!strcmp(c, "free_stack_thread")) {
        /* A thread frees an address on its own stack. */
        on_thread(free_own_stack, NULL);
    } else if (!strcmp(c, "realloc_stack")) {
        char buf[64] = {0};
        sink = buf;
        sink = realloc(sink, 128);
    } else if (!strcmp(c, "free_loader_block")) {
        /* The program's link map: a block of the dynamic loader's early allocator (the kind
         * the loader itself may free through free). */
        free(dlopen(NULL, RTLD_LAZY));
    } else if (!strcmp(c, "free_loader_image")) {
        /* Inside the dynamic loader's own image (its first page). */
        free((char *)getauxval(AT_BASE) + 64);
    } else if (!strcmp(c, "free_mmap")) {
        char *m = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) return 2;
        free(m + 4096);
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
    } else if (!strcmp(c, "overflow_small_1")) {
        /* One byte past the 64 bytes asked for (into the next block, or the block's slack). */
        char *p, *q;
        adjacent_pair(&p, &q);
        p[64] = 'A';
        free(p);
    } else if (!strcmp(c, "overflow_small_32")) {
        char *p, *q;
        adjacent_pair(&p, &q);
        memset(p + 64, 'A', 32);
        free(p);
    } else if (!strcmp(c, "underflow_small_8")) {
        /* The 8 bytes before the block: glibc's chunk header, the end of the block before. */
        char *p, *q;
        adjacent_pair(&p, &q);
        memset(q - 8, 'A', 8);
        free(q);
    } else if (!strcmp(c, "overflow_small_1mib")) {
        /* 1 MiB past a 64-byte block, then more blocks of its size: the allocator meets what
         * the write left on its free lists (if it keeps them in the blocks) within the page.
         * The block is the lowest of 16 (the others stay live), so that free blocks of its
         * page lie after it whatever order the blocks come in. */
        static char *b[16];
        char *p = b[0] = malloc(64);
        for (int i = 1; i < 16; i++)
            if ((b[i] = malloc(64)) < p) p = b[i];
        sink = b;
        memset(p + 64, 'A', 1 << 20);
        free(p);
        for (int i = 0; i < 4096; i++) sink = malloc(64);
    } else if (!strcmp(c, "overflow_huge_1")) {
        /* One byte past a block of whole pages, from mmap in every allocator here. */
        char *p = malloc(8 << 20);
        p[8 << 20] = 'A';
        free(p);
    } else if (!strcmp(c, "use_after_free_write")) {
        /* Writes into a freed block, then asks for two blocks of its size. */
        char *p = malloc(64);
        free(p);
        memset(p, 'A', 64);
        char *a = malloc(64), *b = malloc(64);
        sink = a;
        sink = b;
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

/* Pointers the allocator never handed out: free ignores them (the memory is left alone),
 * malloc_usable_size says 0, realloc copies what is readable into a new block and leaves the
 * old memory alone. Nothing may crash or be corrupted. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static int failures;
#define CHECK(c)                                                                         \
    do {                                                                                 \
        if (!(c)) {                                                                      \
            fprintf(stderr, "foreign.c:%d: check failed: %s\n", __LINE__, #c);          \
            failures++;                                                                  \
        }                                                                                \
    } while (0)

static char static_buf[256] = "static";

int main(void) {
    /* A page from mmap, followed by a hole. */
    unsigned char *m = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(m != MAP_FAILED);
    munmap(m + 4096, 4096);
    for (int i = 0; i < 4096; i++) m[i] = (unsigned char)(i * 7);

    free(m);
    free(m + 100);
    free(static_buf);
    char stack_buf[64] = "stack";
    free(stack_buf);
    CHECK(strcmp(static_buf, "static") == 0 && strcmp(stack_buf, "stack") == 0);
    for (int i = 0; i < 4096; i++) if (m[i] != (unsigned char)(i * 7)) { CHECK(!"mmap page intact"); break; }
    CHECK(malloc_usable_size(m) == 0);
    CHECK(malloc_usable_size(static_buf) == 0);

    /* After those frees the allocator still works and never hands out foreign memory. */
    for (int i = 0; i < 10000; i++) {
        unsigned char *p = malloc((size_t)i % 700 + 1);
        CHECK(p && !(p >= m && p < m + 4096));
        free(p);
    }

    /* realloc of a foreign pointer: a new block with the readable bytes. */
    unsigned char *r = realloc(m, 100);
    CHECK(r && r != m);
    for (int i = 0; i < 100; i++) if (r[i] != (unsigned char)(i * 7)) { CHECK(!"shrunk copy"); break; }
    free(r);
    /* Growing past the end of the mapping: the readable 4096 bytes are copied, no fault. */
    r = realloc(m + 2048, 10000);
    CHECK(r != NULL);
    if (r) for (int i = 0; i < 2048; i++) if (r[i] != (unsigned char)((i + 2048) * 7)) { CHECK(!"grown copy"); break; }
    free(r);
    r = realloc(static_buf, 1000);
    CHECK(r && strcmp((char *)r, "static") == 0);
    free(r);
    /* Nothing readable there at all: NULL with EINVAL. */
    errno = 0;
    r = realloc(m + 4096, 100);
    CHECK(r == NULL && errno == EINVAL);
    for (int i = 0; i < 4096; i++) if (m[i] != (unsigned char)(i * 7)) { CHECK(!"mmap page intact after realloc"); break; }
    munmap(m, 4096);

    if (failures) return 1;
    printf("foreign ok\n");
    return 0;
}

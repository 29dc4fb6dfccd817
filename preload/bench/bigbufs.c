/* Large buffers, one thread: N slots, each step replaces a random slot's buffer with a new one
 * of a random size between MIN and MAX MiB (uniform in bytes, page-granular), written whole
 * (memset), and reads one byte of the old one before freeing it. What a program that loads
 * files, images or network batches into fresh buffers does: the allocator either reuses the
 * memory it just got back (no page faults) or maps and faults in new memory every time.
 * Prints a checksum (the same under every allocator) on stdout and the time on stderr.
 * Usage: bigbufs [slots] [steps] [min MiB] [max MiB] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline uint64_t rnd(uint64_t *s) { *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17; return *s; }

int main(int argc, char **argv) {
    int slots = argc > 1 ? atoi(argv[1]) : 16;
    long steps = argc > 2 ? atol(argv[2]) : 2000;
    size_t lo = (size_t)(argc > 3 ? atol(argv[3]) : 1) << 20;
    size_t hi = (size_t)(argc > 4 ? atol(argv[4]) : 32) << 20;
    if (slots < 1 || steps < 0 || lo == 0 || hi < lo) {
        fprintf(stderr, "usage: bigbufs [slots] [steps] [min MiB] [max MiB]\n");
        return 2;
    }
    unsigned char **buf = calloc((size_t)slots, sizeof *buf);
    size_t *len = calloc((size_t)slots, sizeof *len);
    if (!buf || !len) abort();
    uint64_t s = 0x9E3779B97F4A7C15ull, sum = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < steps + slots; i++) {
        uint64_t r = rnd(&s);
        /* The first `slots` steps fill every slot once. */
        int k = i < slots ? (int)i : (int)(r % (uint64_t)slots);
        if (buf[k]) {
            sum += buf[k][(r >> 20) % len[k]];
            free(buf[k]);
        }
        size_t n = lo + (size_t)((r >> 32) % (uint64_t)(hi - lo + 1));
        unsigned char *p = malloc(n);
        if (!p) abort();
        memset(p, (int)(i & 0x7f) + 1, n);
        buf[k] = p;
        len[k] = n;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    for (int k = 0; k < slots; k++) free(buf[k]);
    free(buf);
    free(len);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    fprintf(stderr, "bigbufs: %ld replacements in %.3f s (%.0f /s)\n", steps, secs,
            secs > 0 ? (double)steps / secs : 0.0);
    printf("bigbufs %d %ld %zu %zu: checksum %llu\n", slots, steps, lo >> 20, hi >> 20,
           (unsigned long long)sum);
    return 0;
}

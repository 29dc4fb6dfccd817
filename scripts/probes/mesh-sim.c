// What meshing could give back on `frag` (docs/benchmarks.md, "Meshing, weighed"): a
// simulation of the workload's small-object heap in tieralloc's bins, not a run of the
// allocator. Objects of 16..=512 bytes (uniform, as `frag` draws them) fill 64 KiB pages of
// their bin in order until `fill` bytes are requested; each stays live with probability 1/10
// (frag frees 90 % at random). For every 4 KiB OS page that held a block it prints what stays
// resident: everything (no trim), the OS pages with a live byte (tieralloc's trim gives back
// the rest), and those OS pages meshed within their bin, two to a physical page (Mesh's pairs)
// or any number (first fit), where OS pages may share a physical page if their live bytes do
// not overlap at the same offsets. `candidates` bounds the physical pages a first fit looks
// at (Mesh's SplitMesher probes 64).
//   cc -O2 -o mesh-sim scripts/probes/mesh-sim.c && ./mesh-sim [fill_mib] [candidates] [seed]
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAGE (64u << 10)
#define OSP 4096u
#define GR 16u                    // granule: every block from 16 B on starts at a multiple
#define WORDS (OSP / GR / 64)     // 4 words of 64 granules per OS page
#define NBINS 45

typedef struct { uint64_t w[WORDS]; } bits;

static uint64_t s;
static uint64_t rnd(void) {
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}

// tieralloc's bins (src/heap/size_class.rs).
static size_t bin_size(int b) {
  if (b == 0) return 8;
  if (b <= 8) return (size_t)b * 16;
  int j = b - 9, k = 7 + j / 4, r = j % 4;
  return ((size_t)1 << k) + (size_t)(r + 1) * ((size_t)1 << (k - 2));
}
static int bin_of(size_t size) {
  if (size <= 8) return 0;
  if (size <= 128) return (int)((size + 15) >> 4);
  size_t x = size - 1;
  int k = 63 - __builtin_clzll(x);
  return 9 + (k - 7) * 4 + (int)((x >> (k - 2)) & 3);
}

static int disjoint(const bits *a, const bits *b) {
  for (unsigned i = 0; i < WORDS; i++)
    if (a->w[i] & b->w[i]) return 0;
  return 1;
}
static void merge(bits *a, const bits *b) {
  for (unsigned i = 0; i < WORDS; i++) a->w[i] |= b->w[i];
}
static void mark(bits *b, size_t from, size_t to) {  // granules [from, to) of one OS page
  for (size_t g = from; g < to; g++) b->w[g / 64] |= 1ull << (g % 64);
}

// Physical pages a first fit packs `n` OS pages into, at most `cap` to one, looking at the
// last `cand` physical pages opened.
static size_t pack(const bits *os, size_t n, size_t cap, size_t cand) {
  bits *frame = calloc(n ? n : 1, sizeof(bits));
  size_t *fill = calloc(n ? n : 1, sizeof(size_t));
  size_t frames = 0;
  for (size_t i = 0; i < n; i++) {
    size_t lo = frames > cand ? frames - cand : 0, f;
    for (f = frames; f-- > lo;)
      if (fill[f] < cap && disjoint(&frame[f], &os[i])) break;
    if (f == (size_t)-1 || f < lo) f = frames++;
    merge(&frame[f], &os[i]);
    fill[f]++;
  }
  free(frame);
  free(fill);
  return frames;
}

int main(int argc, char **argv) {
  size_t fill = (argc > 1 ? strtoull(argv[1], 0, 10) : 200) << 20;
  size_t cand = argc > 2 ? strtoull(argv[2], 0, 10) : 64;
  s = argc > 3 ? strtoull(argv[3], 0, 10) : 99;
  if (!s) s = 99;
  // Per bin: the OS pages of its pages, in order, with their live granules.
  bits *os[NBINS] = {0};
  size_t nos[NBINS] = {0}, cap[NBINS] = {0}, carved[NBINS] = {0};
  size_t requested = 0, live = 0;
  while (requested < fill) {
    size_t sz = 16 + rnd() % 497;
    int b = bin_of(sz);
    size_t bs = bin_size(b), per = PAGE / bs;
    size_t k = carved[b]++, page = k / per, at = page * PAGE + (k % per) * bs;
    size_t need = (at + bs + OSP - 1) / OSP;  // OS pages of the bin so far
    if (need > cap[b]) {
      size_t c = cap[b] ? cap[b] * 2 : 1024;
      while (c < need) c *= 2;
      os[b] = realloc(os[b], c * sizeof(bits));
      memset(os[b] + cap[b], 0, (c - cap[b]) * sizeof(bits));
      cap[b] = c;
    }
    if (need > nos[b]) nos[b] = need;
    requested += sz;
    if (rnd() % 10 != 0) continue;  // freed
    live += sz;
    for (size_t o = at; o < at + bs; o = (o / OSP + 1) * OSP) {
      size_t end = (o / OSP + 1) * OSP < at + bs ? (o / OSP + 1) * OSP : at + bs;
      mark(&os[b][o / OSP], (o % OSP) / GR, (end - 1) % OSP / GR + 1);
    }
  }
  size_t all = 0, held = 0, pairs = 0, any = 0;
  for (int b = 0; b < NBINS; b++) {
    if (!nos[b]) continue;
    // OS pages past a page's last whole block are never written: not resident.
    size_t bs = bin_size(b), per = PAGE / bs, used = (per * bs + OSP - 1) / OSP;
    size_t n = 0;
    bits *h = malloc(nos[b] * sizeof(bits));
    for (size_t i = 0; i < nos[b]; i++) {
      if (i % (PAGE / OSP) >= used) continue;
      all++;
      if (!disjoint(&os[b][i], &os[b][i])) h[n++] = os[b][i];  // a live granule
    }
    // Mesh's candidates are random: shuffle.
    for (size_t i = n; i > 1; i--) {
      size_t j = rnd() % i;
      bits t = h[i - 1];
      h[i - 1] = h[j];
      h[j] = t;
    }
    held += n;
    pairs += pack(h, n, 2, cand);
    any += pack(h, n, (size_t)-1, cand);
    free(h);
    free(os[b]);
  }
  double m = (double)OSP / (1 << 20);
  printf("requested %.1f MiB, live %.1f MiB (%.1f %%)\n", requested / 1048576.0,
         live / 1048576.0, 100.0 * live / requested);
  printf("resident OS pages, MiB: written %.1f, with a live byte (trim's bound) %.1f, "
         "meshed in pairs %.1f, meshed first fit (%zu candidates) %.1f\n",
         all * m, held * m, pairs * m, cand, any * m);
  return 0;
}

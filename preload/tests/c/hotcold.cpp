// The hot/cold hints of the drop-in (preload/include/tieralloc.h), run by tests/hotcold.rs
// under TIERALLOC_SIMULATE_NODES=2,far=1 (node 2 is the far tier). Each phase keeps its blocks
// live while malloc_stats() prints the per-node table, after a marker line on stderr:
//   "phase base": nothing hinted live;
//   "phase cold": COLD_BYTES in blocks from every hinted form with hint 0;
//   "phase hot":  the same forms with hint 255.
// The test reads the per-node live bytes of each table. The program itself checks sizes,
// alignment, contents, usable sizes and that every block is freed by plain free/delete.
#include "tieralloc.h"

#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <new>

static const size_t BLOCK = 16384;

static void fail(const char *what) {
  fprintf(stdout, "FAIL %s\n", what);
  exit(1);
}

static void phase(const char *name) {
  fprintf(stderr, "phase %s\n", name);
  malloc_stats();
  fprintf(stderr, "end phase %s\n", name);
}

// Allocates one block with every hinted form (8 blocks of BLOCK bytes, BLOCK-aligned where
// aligned), fills them, and frees them with the matching plain free/delete after the table.
static void run(uint8_t h, const char *name) {
  __hot_cold_t hint = static_cast<__hot_cold_t>(h);
  void *a = ::operator new(BLOCK, hint);
  void *b = ::operator new(BLOCK, std::nothrow, hint);
  void *c = ::operator new[](BLOCK, hint);
  void *d = ::operator new[](BLOCK, std::nothrow, hint);
  void *e = ::operator new(BLOCK, std::align_val_t(4096), hint);
  void *f = ::operator new[](BLOCK, std::align_val_t(4096), std::nothrow, hint);
  __sized_ptr_t g = __size_returning_new_hot_cold(BLOCK, hint);
  void *m = tieralloc_malloc_hinted(BLOCK, h);
  void *all[] = {a, b, c, d, e, f, g.p, m};
  for (void *p : all) {
    if (!p) fail("a hinted allocation returned null");
    if ((uintptr_t)p % 16) fail("a block is not 16-byte aligned");
    if (malloc_usable_size(p) < BLOCK) fail("a block is smaller than asked");
    memset(p, h ^ 0x5a, BLOCK);
  }
  if ((uintptr_t)e % 4096 || (uintptr_t)f % 4096) fail("an aligned block is misaligned");
  if (g.n < BLOCK || g.n != malloc_usable_size(g.p)) fail("size-returning new's size");
  // Zero bytes: a unique, freeable block.
  void *z = tieralloc_malloc_hinted(0, h);
  if (!z) fail("tieralloc_malloc_hinted(0) returned null");
  phase(name);
  for (void *p : all)
    for (size_t i = 0; i < BLOCK; i += 512)
      if (((unsigned char *)p)[i] != (unsigned char)(h ^ 0x5a)) fail("contents changed");
  ::operator delete(a);
  ::operator delete(b);
  ::operator delete[](c);
  ::operator delete[](d);
  ::operator delete(e, std::align_val_t(4096));
  ::operator delete[](f, std::align_val_t(4096));
  ::operator delete(g.p, g.n);
  free(m);
  free(z);
  // A hinted block can be reallocated as any other.
  void *r = tieralloc_malloc_hinted(100, h);
  memset(r, 7, 100);
  r = realloc(r, 200000);
  if (!r || ((unsigned char *)r)[99] != 7) fail("realloc of a hinted block");
  free(r);
}

int main() {
  phase("base");
  run(0, "cold");
  run(255, "hot");
  // Every hint value is accepted.
  for (int h = 0; h < 256; h += 17) free(tieralloc_malloc_hinted(64, (uint8_t)h));
  printf("hotcold ok\n");
  return 0;
}

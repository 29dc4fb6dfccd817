// The drop-in's hot/cold hints in the project's NUMA VM (node 2 the far tier), run by
// numa_probe (vm-probe/) under LD_PRELOAD of the drop-in (tests/numa_vm.rs builds it with g++ and
// puts it, the library and the libraries they need in the VM). Pinned to CPU 0 (node 0), it
// allocates 8 blocks of 64 KiB with every hinted form (C++ `new`, `new[]`, `nothrow`, aligned,
// `__size_returning_new_hot_cold`, `tieralloc_malloc_hinted`) with hint 0 and with hint 255,
// fills them, and counts with move_pages(2) which node each page is on: hint 0 must be all on
// node 2, hint 255 all on node 0. Prints one "ok"/"FAIL" line per hint; exits 1 on a failure.
#include "tieralloc.h"

#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <map>
#include <new>
#include <string>
#include <vector>

static const size_t BLOCK = 65536;
static const size_t PAGE = 4096;

// Pages of each block per node (negative: the kernel's errno for a page).
static std::map<int, int> census(void *const *blocks, int n) {
  std::vector<void *> pages;
  for (int i = 0; i < n; i++) {
    uintptr_t s = (uintptr_t)blocks[i] / PAGE * PAGE;
    for (uintptr_t p = s; p < (uintptr_t)blocks[i] + BLOCK; p += PAGE) pages.push_back((void *)p);
  }
  std::vector<int> status(pages.size(), -1000);
  std::map<int, int> m;
  if (syscall(SYS_move_pages, 0, pages.size(), pages.data(), nullptr, status.data(), 0) != 0) {
    m[-2000] = (int)pages.size();
    return m;
  }
  for (int s : status) m[s]++;
  return m;
}

static bool check(uint8_t h, int node) {
  __hot_cold_t hint = static_cast<__hot_cold_t>(h);
  void *all[] = {
      ::operator new(BLOCK, hint),
      ::operator new(BLOCK, std::nothrow, hint),
      ::operator new[](BLOCK, hint),
      ::operator new[](BLOCK, std::nothrow, hint),
      ::operator new(BLOCK, std::align_val_t(4096), hint),
      ::operator new[](BLOCK, std::align_val_t(4096), std::nothrow, hint),
      __size_returning_new_hot_cold(BLOCK, hint).p,
      tieralloc_malloc_hinted(BLOCK, h),
  };
  for (void *p : all) {
    if (!p) {
      printf("FAIL cxx-hint-%d: a hinted allocation returned null\n", h);
      return false;
    }
    memset(p, h ^ 0x5a, BLOCK);
  }
  std::map<int, int> m = census(all, 8);
  std::string d;
  for (auto &kv : m) d += std::to_string(kv.first) + ": " + std::to_string(kv.second) + ", ";
  bool ok = m.size() == 1 && m.begin()->first == node;
  printf("%s cxx-hint-%d-on-node-%d: 8 blocks of 64 KiB from new, new[], nothrow, aligned, "
         "__size_returning_new_hot_cold, tieralloc_malloc_hinted: pages {%s}\n",
         ok ? "ok  " : "FAIL", h, node, d.c_str());
  return ok;
}

int main() {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(0, &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0) {
    printf("FAIL cxx-hint: pinning to CPU 0\n");
    return 1;
  }
  bool ok = check(0, 2);
  ok = check(255, 0) && ok;
  return ok ? 0 : 1;
}

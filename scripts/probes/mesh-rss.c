// What the kernel's resident-memory counters say about a meshed page (docs/benchmarks.md,
// "Meshing, weighed"): two virtual pages pointed at one physical page of a memory file, as
// meshing would leave them. 2N pages of a memfd mapped MAP_SHARED are written; then each odd
// page is "meshed" onto the even page before it (mmap MAP_FIXED of the even page's file
// offset over the odd page, the odd page's own offset punched out, as a mesh after its copy
// would); then every odd page is read again. At each step: VmRSS, VmHWM, RssShmem (counted
// per mapped page table entry), Pss (a page mapped twice counts half at each) and the memory
// cgroup's usage (physical pages, once), if the cgroup's file is readable.
//   cc -O2 scripts/probes/mesh-rss.c -o /tmp/mesh-rss && /tmp/mesh-rss [pairs]
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096UL

static long field(const char *file, const char *name) {
  char line[512];
  long kib = -1;
  FILE *f = fopen(file, "r");
  if (!f) return -1;
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, name, strlen(name))) kib = atol(line + strlen(name));
  fclose(f);
  return kib;
}

// The memory cgroup (v1) usage of this process's cgroup, KiB, or -1.
static long cgroup_kib(void) {
  char line[512], path[1024];
  long bytes = -1;
  FILE *f = fopen("/proc/self/cgroup", "r");
  if (!f) return -1;
  path[0] = 0;
  while (fgets(line, sizeof line, f)) {
    char *m = strstr(line, ":memory:");
    if (m) {
      m[strcspn(m, "\n")] = 0;
      snprintf(path, sizeof path, "/sys/fs/cgroup/memory%s/memory.usage_in_bytes", m + 8);
    }
  }
  fclose(f);
  if (!path[0] || !(f = fopen(path, "r"))) return -1;
  if (fscanf(f, "%ld", &bytes) != 1) bytes = -1;
  fclose(f);
  return bytes < 0 ? -1 : bytes / 1024;
}

static void show(const char *step) {
  printf("%-34s VmRSS %7ld  VmHWM %7ld  RssShmem %7ld  Pss %7ld  cgroup %8ld KiB\n", step,
         field("/proc/self/status", "VmRSS:"), field("/proc/self/status", "VmHWM:"),
         field("/proc/self/status", "RssShmem:"), field("/proc/self/smaps_rollup", "Pss:"),
         cgroup_kib());
}

int main(int argc, char **argv) {
  size_t pairs = argc > 1 ? strtoul(argv[1], 0, 10) : 8192;
  if (pairs == 0 || pairs > 16384) {
    fprintf(stderr, "usage: mesh-rss [pairs, 1..16384]\n");
    return 2;
  }
  size_t len = 2 * pairs * PAGE;
  int fd = memfd_create("mesh-rss", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, (off_t)len)) return perror("memfd"), 1;
  char *base = mmap(0, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) return perror("mmap"), 1;
  show("start");
  memset(base, 1, len);
  show("2N pages written");
  for (size_t i = 0; i < pairs; i++) {
    size_t host = 2 * i * PAGE, guest = host + PAGE;
    if (mmap(base + guest, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd,
             (off_t)host) == MAP_FAILED)
      return perror("mmap fixed"), 1;
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)guest, PAGE))
      return perror("fallocate"), 1;
  }
  show("N meshed, guests not touched");
  volatile unsigned long sum = 0;
  for (size_t i = 0; i < pairs; i++) sum += (unsigned char)base[(2 * i + 1) * PAGE];
  show("N meshed, every guest read");
  return sum == pairs ? 0 : 3;
}

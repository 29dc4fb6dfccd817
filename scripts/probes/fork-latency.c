// How long fork() takes while other threads allocate (docs/benchmarks.md, "fork while threads
// allocate"): from ded2978 to review rev51 tieralloc's prepare handler waited until no
// other thread was inside a slow path of the allocator (it pinned their heaps' gates); since,
// it only takes its locks, as every allocator's handlers do. THREADS threads replace blocks
// of 16 B to 1 MiB at random in 64 slots (a slow path every few calls for the large ones);
// the main thread forks FORKS times, each child _exits at once, and the parent times fork()
// (the call, in the parent) and prints the median, the 90th percentile and the maximum in
// microseconds. Run it under each allocator:
//   cc -O2 -pthread scripts/probes/fork-latency.c -o /tmp/fork-latency
//   LD_PRELOAD=target/release/libtieralloc_preload.so /tmp/fork-latency [threads] [forks]
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static atomic_int stop;

static uint64_t next_rand(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

static void *churn(void *arg) {
  uint64_t s = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15u | 1;
  void *slot[64] = {0};
  while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
    unsigned k = next_rand(&s) % 64;
    free(slot[k]);
    uint64_t r = next_rand(&s) % 100;
    size_t n = r < 80 ? 16 + next_rand(&s) % 1024 : (64 << 10) + next_rand(&s) % (960 << 10);
    slot[k] = malloc(n);
    if (slot[k]) memset(slot[k], 1, n < 4096 ? n : 4096);
  }
  for (unsigned k = 0; k < 64; k++) free(slot[k]);
  return NULL;
}

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 3;
  int forks = argc > 2 ? atoi(argv[2]) : 400;
  if (threads < 0 || threads > 64 || forks < 1) return 2;
  pthread_t t[64];
  for (int i = 0; i < threads; i++)
    if (pthread_create(&t[i], NULL, churn, (void *)(uintptr_t)(i + 1)) != 0) return 3;
  double *us = calloc((size_t)forks, sizeof *us);
  if (!us) return 4;
  for (int k = 0; k < forks; k++) {
    usleep(1000);
    double t0 = now_us();
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    us[k] = now_us() - t0;
    if (pid < 0 || waitpid(pid, NULL, 0) != pid) return 5;
  }
  atomic_store(&stop, 1);
  for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
  qsort(us, (size_t)forks, sizeof *us, cmp);
  printf("fork us: median %.0f p90 %.0f max %.0f (%d threads, %d forks)\n", us[forks / 2],
         us[forks * 9 / 10], us[forks - 1], threads, forks);
  free(us);
  return 0;
}

// Run by scripts/memfd-cost.sh. What meshing's prerequisite costs: segments backed by a memfd
// (MAP_SHARED) instead of anonymous private memory. Per 4 MiB segment: fault every 4 KiB page in (write one byte),
// purge it (anon: MADV_DONTNEED; memfd: fallocate PUNCH_HOLE), fault again; and fork with
// N MiB resident (anon: COW tables; memfd: shared, so a meshing allocator must copy it in
// the child: measured as the child's copy of the whole region into fresh anonymous memory).
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fcntl.h>
#include <time.h>
#include <linux/falloc.h>

static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#define SEG (4u<<20)
#define NSEG 64
int main(int argc,char**argv){
  int mode=argc>1?atoi(argv[1]):0; // 0 anon, 1 memfd
  int fd=-1; char*base;
  size_t len=(size_t)SEG*NSEG;
  if(mode){fd=memfd_create("seg",MFD_CLOEXEC); if(ftruncate(fd,len))return 1;
    base=mmap(0,len,PROT_READ|PROT_WRITE,MAP_SHARED,fd,0);}
  else base=mmap(0,len,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  if(base==MAP_FAILED)return 2;
  madvise(base,len,MADV_NOHUGEPAGE);
  double t0=now();
  for(int r=0;r<4;r++){
    for(size_t o=0;o<len;o+=4096) base[o]=1;
    if(r==3)break;
    if(mode) fallocate(fd,FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE,0,len);
    else madvise(base,len,MADV_DONTNEED);
  }
  double t1=now();
  // fork with the region resident
  double f0=now();
  pid_t p=fork();
  if(p==0){
    if(mode){ // make it private: copy out, map anon over, copy back (what a meshing allocator's child handler does)
      char*tmp=mmap(0,len,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
      memcpy(tmp,base,len);
      mremap(tmp,len,len,MREMAP_MAYMOVE|MREMAP_FIXED,base);
    }
    base[0]=2; _exit(0);
  }
  int st; waitpid(p,&st,0);
  double f1=now();
  printf("%s faults %.1f ns/page (4 passes of %zu pages, 3 purges), fork+child %.2f ms\n",
    mode?"memfd":"anon ",(t1-t0)*1e9/(4.0*len/4096),len/4096,(f1-f0)*1e3);
  return 0;
}

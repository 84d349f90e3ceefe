/* How fast memory serves a (S, H, D) float32 array (a (B, S, H, D) KV cache's batch
 * row) read head by head, each head's D floats out of every H * D, against the same
 * bytes read in order: a plain sum, 2 threads, no attention. The measurement behind
 * decoding such a cache with the heads in lockstep (fa_attend_heads).
 *
 *   gcc -O2 -mavx512f -fopenmp tools/strided_read.c -o /tmp/strided_read
 *   /tmp/strided_read S AHEAD T H     e.g. 32768 13 64 8
 *
 * S rows, AHEAD rows of software prefetch for the head-by-head modes, T rows per
 * tile (modes 3-5), H heads of D = 128. Modes: 0 head by head with a prefetch AHEAD
 * rows on; 1 row order; 2 head by head, no prefetch; 3 tiles of T rows, head by head
 * inside a tile, the next tile's rows fetched in order, spread over the rows read
 * (what fa_attend_heads does); 4 jobs of (tile, head) in any order, each fetching its
 * share of the next tile; 5 a tile's rows fetched in one burst, then head by head. */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include <sys/mman.h>
static double now(void){return omp_get_wtime();}
int main(int argc,char**argv){
  long S=atol(argv[1]); int H=atoi(argv[4]), D=128; int ahead=atoi(argv[2]);
  size_t bytes=(size_t)S*H*D*4;
  float *a; posix_memalign((void**)&a, 2<<20, bytes); madvise(a, bytes, MADV_HUGEPAGE);
  for(size_t i=0;i<bytes/4;i++) a[i]=1.0f;
  int T=atoi(argv[3]);
  for(int mode=0;mode<6;mode++) for(int rep=0;rep<3;rep++){
    double t=now(); double total=0;
    #pragma omp parallel num_threads(2) reduction(+:total)
    {
      __m512 acc=_mm512_setzero_ps();
      if(mode==0){ /* head-major: head h's rows, each 512 B, 4 KB apart; heads dealt to threads */
        #pragma omp for schedule(dynamic)
        for(int h=0;h<H;h++) for(long s=0;s<S;s++){
          const float *r=a+(s*H+h)*D;
          const char *p=(const char*)(a+((s+ahead)*H+h)*D);
          if(s+ahead<S) for(int l=0;l<512;l+=64) _mm_prefetch(p+l,_MM_HINT_T1);
          for(int c=0;c<D;c+=16) acc=_mm512_add_ps(acc,_mm512_loadu_ps(r+c));
        }
      } else if(mode==1){ /* row order: chunks of rows split between threads */
        #pragma omp for schedule(static)
        for(long s=0;s<S;s++){ const float *r=a+s*H*D;
          const char *p=(const char*)(a+(s+ahead/8+1)*H*D);
          if(s+ahead/8+1<S) for(int l=0;l<4096;l+=64) _mm_prefetch(p+l,_MM_HINT_T1);
          for(int c=0;c<H*D;c+=16) acc=_mm512_add_ps(acc,_mm512_loadu_ps(r+c));}
      } else if(mode==3){ /* tiles of T rows; in a tile head by head; the next tile prefetched as one run */
        #pragma omp for schedule(static)
        for(long s0=0;s0<S;s0+=T){
          const char *next=(const char*)(a+(s0+T)*H*D); long nb=(s0+T<S)?(long)T*H*D*4:0;
          long per=(nb/64+ (long)T*H-1)/((long)T*H); /* lines per (row, head) step */
          long line=0;
          for(int h=0;h<H;h++) for(long s=s0;s<s0+T;s++){
            for(long l=0;l<per && line*64<nb;l++,line++) _mm_prefetch(next+line*64,_MM_HINT_T1);
            const float *r=a+(s*H+h)*D;
            for(int c=0;c<D;c+=16) acc=_mm512_add_ps(acc,_mm512_loadu_ps(r+c));
          }
        }
      } else if(mode==4){ /* jobs (chunk of T rows, head) chunk-major, dynamic; each job prefetches its share of the next chunk's whole region, spread over its rows */
        long nch=(S+T-1)/T;
        #pragma omp for schedule(dynamic)
        for(long job=0;job<nch*H;job++){
          long c=job/H; int h=job%H; long s0=c*T;
          const char *region=(const char*)(a+(s0+T)*H*D); long rb=(c+1<nch)?(long)T*H*D*4:0;
          const char *share=region+h*(rb/H); long per=rb/H/T;
          for(long s=s0;s<s0+T&&s<S;s++){
            if(rb) for(long l=0;l<per;l+=64) _mm_prefetch(share+(s-s0)*per+l,_MM_HINT_T1);
            const float *r=a+(s*H+h)*D;
            for(int c2=0;c2<D;c2+=16) acc=_mm512_add_ps(acc,_mm512_loadu_ps(r+c2));
          }
        }
      } else if(mode==5){ /* jobs = chunks of T rows, dynamic; a burst prefetch of the chunk's region, then heads one after another */
        #pragma omp for schedule(dynamic)
        for(long s0=0;s0<S;s0+=T){
          const char *region=(const char*)(a+s0*H*D); long rb=(long)T*H*D*4;
          for(long l=0;l<rb;l+=64) _mm_prefetch(region+l,_MM_HINT_T1);
          for(int h=0;h<H;h++) for(long s=s0;s<s0+T;s++){
            const float *r=a+(s*H+h)*D;
            for(int c2=0;c2<D;c2+=16) acc=_mm512_add_ps(acc,_mm512_loadu_ps(r+c2));
          }
        }
      } else { /* head-major without software prefetch */
        #pragma omp for schedule(dynamic)
        for(int h=0;h<H;h++) for(long s=0;s<S;s++){
          const float *r=a+(s*H+h)*D;
          for(int c=0;c<D;c+=16) acc=_mm512_add_ps(acc,_mm512_loadu_ps(r+c));
        }
      }
      total+=_mm512_reduce_add_ps(acc);
    }
    t=now()-t;
    printf("mode %d (%s): %.1f GB/s (%g)\n",mode, mode==0?"head-major, prefetch":mode==1?"row order":mode==3?"tiles, heads inside":mode==4?"jobs (chunk, head), shared next-chunk prefetch":mode==5?"jobs (chunk), burst prefetch, heads inside":"head-major, no prefetch", bytes/t/1e9,total);
  }
}

/* The one place that calls the OpenMP runtime: stubs when built without OpenMP
 * (FASTATTN_OPENMP=0, or a compiler without it), so the rest never checks. */
#ifndef FA_OPENMP_H
#define FA_OPENMP_H
#ifdef _OPENMP
#include <omp.h>
static inline int fa_openmp_enabled(void) { return 1; }
static inline int fa_openmp_max_threads(void) { return omp_get_max_threads(); }
#else
static inline int fa_openmp_enabled(void) { return 0; }
static inline int fa_openmp_max_threads(void) { return 1; }
#endif
#endif

#ifndef ACNN_CPU_FEATURES_H
#define ACNN_CPU_FEATURES_H
/// The best kernel family this CPU and OS can run: 2 = AVX-512 (F, BW, DQ, VL), 1 = AVX2 + FMA,
/// 0 = portable code only (also on every non-x86 CPU).
int acnn_cpu_level(void);
/// glibc only: allocations under mmap_threshold bytes come from the heap, and the heap is
/// trimmed only past trim_threshold free bytes (mallopt M_MMAP_THRESHOLD / M_TRIM_THRESHOLD), so
/// freed memory is kept for later allocations. Returns 1 when applied, 0 elsewhere.
int acnn_malloc_keep_freed(long mmap_threshold, long trim_threshold);
/// Bytes malloc has handed out and not had back (glibc 2.33+), or -1.
long acnn_malloc_in_use(void);
#endif

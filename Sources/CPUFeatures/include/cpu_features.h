#ifndef ACNN_CPU_FEATURES_H
#define ACNN_CPU_FEATURES_H
/// The best kernel family this CPU and OS can run: 2 = AVX-512 (F, BW, DQ, VL), 1 = AVX2 + FMA,
/// 0 = portable code only (also on every non-x86 CPU).
int acnn_cpu_level(void);
#endif

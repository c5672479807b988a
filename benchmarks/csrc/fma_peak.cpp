// The float32 multiply-add peak of this CPU with torch's threads: every thread runs
// independent FMA chains on registers only (no memory traffic), so the figure is what the
// cores' FMA units deliver at the clock they hold under load. benchmarks/roofline.py uses it
// as the arithmetic ceiling of a float32 forward.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <chrono>
#include <cstdint>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

#if defined(__AVX512F__)
using V = __m512;
constexpr int64_t kLanes = 16;
inline V splat(float x) { return _mm512_set1_ps(x); }
inline V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline float first(V v) { return _mm512_cvtss_f32(v); }
#elif defined(__AVX2__) && defined(__FMA__)
using V = __m256;
constexpr int64_t kLanes = 8;
inline V splat(float x) { return _mm256_set1_ps(x); }
inline V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline float first(V v) { return _mm256_cvtss_f32(v); }
#else
using V = float;
constexpr int64_t kLanes = 1;
inline V splat(float x) { return x; }
inline V fma(V a, V b, V c) { return a * b + c; }
inline float first(V v) { return v; }
#endif

constexpr int kChains = 12;  // enough independent chains to cover the FMA latency on two pipes

// GFLOP/s of `iterations` rounds of kChains vector FMAs on every one of torch's threads.
double fma_peak(int64_t iterations) {
  const int threads = at::get_num_threads();
  float sink = 0.f;
  const auto start = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      V acc[kChains];
      for (int c = 0; c < kChains; ++c) acc[c] = splat(0.001f * static_cast<float>(c));
      const V a = splat(0.9999f), b = splat(0.0001f);
      for (int64_t i = 0; i < iterations; ++i)
#pragma GCC unroll 12
        for (int c = 0; c < kChains; ++c) acc[c] = fma(acc[c], a, b);
      float total = 0.f;
      for (int c = 0; c < kChains; ++c) total += first(acc[c]);
#pragma omp atomic
      sink += total;
    }
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  TORCH_CHECK(sink == sink, "fma_peak: NaN");  // keeps the chains from being optimised away
  return static_cast<double>(threads) * iterations * kChains * kLanes * 2 / seconds / 1e9;
}

}  // namespace

TORCH_LIBRARY(folo_bench, m) { m.def("fma_peak(int iterations) -> float", &fma_peak); }

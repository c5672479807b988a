// Row-wise argmax of float32 logits, for greedy sampling.
//
// Why: ATen's CPU argmax is not vectorised; over 128 rows of a 49,152-token
// vocabulary it takes about 9 ms on a 2-core Xeon, where ``amax`` of the same
// tensor takes under 1 ms. A greedy decode step of 128 requests spent 4% of its
// time there. This is one pass with per-lane running maxima and their indices.
//
// Semantics are torch.argmax's: the first index of the maximum, and where a row
// holds a NaN, the first NaN's index (NaN counts as larger than everything).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstdint>
#include <limits>

namespace {

// Continue a scalar scan from `begin` with the best so far (strict > keeps the first
// maximum); -1 on meeting a NaN.
int64_t scan_rest(const float* x, int64_t begin, int64_t n, float best, int64_t best_index) {
  for (int64_t i = begin; i < n; ++i)
    if (std::isnan(x[i])) return -1;
    else if (x[i] > best) {
      best = x[i];
      best_index = i;
    }
  return best_index;
}

int64_t first_nan(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (std::isnan(x[i])) return i;
  return -1;
}

#if defined(__AVX512F__) || defined(__AVX2__)
// Running per-lane maxima and their indices, in the widest vectors the CPU has.
namespace simd {
#if defined(__AVX512F__)
constexpr int kLanes = 16;
using Vec = __m512;
using IVec = __m512i;
using Mask = __mmask16;
inline Vec load(const float* x) { return _mm512_loadu_ps(x); }
inline IVec iota() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
inline IVec add(IVec a, int32_t b) { return _mm512_add_epi32(a, _mm512_set1_epi32(b)); }
inline Mask is_nan(Vec v) { return _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q); }
inline Mask any(Mask a, Mask b) { return a | b; }
inline bool some(Mask m) { return m != 0; }
// best, best_index = v, index where v > best.
inline void keep_greater(Vec& best, IVec& best_index, Vec v, IVec index) {
  const Mask greater = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ);
  best = _mm512_mask_mov_ps(best, greater, v);
  best_index = _mm512_mask_mov_epi32(best_index, greater, index);
}
inline void store(float* out, Vec v) { _mm512_storeu_ps(out, v); }
inline void store(int32_t* out, IVec v) { _mm512_storeu_si512(out, v); }
#else
constexpr int kLanes = 8;
using Vec = __m256;
using IVec = __m256i;
using Mask = __m256;
inline Vec load(const float* x) { return _mm256_loadu_ps(x); }
inline IVec iota() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
inline IVec add(IVec a, int32_t b) { return _mm256_add_epi32(a, _mm256_set1_epi32(b)); }
inline Mask is_nan(Vec v) { return _mm256_cmp_ps(v, v, _CMP_UNORD_Q); }
inline Mask any(Mask a, Mask b) { return _mm256_or_ps(a, b); }
inline bool some(Mask m) { return _mm256_movemask_ps(m) != 0; }
inline void keep_greater(Vec& best, IVec& best_index, Vec v, IVec index) {
  const Vec greater = _mm256_cmp_ps(v, best, _CMP_GT_OQ);
  best = _mm256_blendv_ps(best, v, greater);
  best_index = _mm256_blendv_epi8(best_index, index, _mm256_castps_si256(greater));
}
inline void store(float* out, Vec v) { _mm256_storeu_ps(out, v); }
inline void store(int32_t* out, IVec v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), v); }
#endif
}  // namespace simd
#endif

// The first maximum of x[0, n); -1 if it met a NaN (the caller looks for the first one).
int64_t row_argmax(const float* x, int64_t n) {
#if defined(__AVX512F__) || defined(__AVX2__)
  using namespace simd;
  if (n >= kLanes) {
    Vec best = load(x);
    IVec best_index = iota(), index = best_index;
    Mask nan = is_nan(best);
    int64_t i = kLanes;
    for (; i + kLanes <= n; i += kLanes) {
      const Vec v = load(x + i);
      index = add(index, kLanes);
      nan = any(nan, is_nan(v));
      keep_greater(best, best_index, v, index);
    }
    if (some(nan)) return -1;
    // Across lanes: the largest value, and of the lanes holding it the smallest index.
    float lanes[kLanes];
    int32_t lane_index[kLanes];
    store(lanes, best);
    store(lane_index, best_index);
    float top = lanes[0];
    int32_t first = lane_index[0];
    for (int j = 1; j < kLanes; ++j)
      if (lanes[j] > top || (lanes[j] == top && lane_index[j] < first)) {
        top = lanes[j];
        first = lane_index[j];
      }
    return scan_rest(x, i, n, top, first);
  }
#endif
  return scan_rest(x, 1, n, x[0], 0);
}

at::Tensor argmax_rows(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat && logits.size(1) > 0,
              "argmax_rows: a 2-D float32 tensor with at least one column");
  TORCH_CHECK(logits.size(1) <= std::numeric_limits<int32_t>::max(), "argmax_rows: too many columns");
  const at::Tensor x = logits.contiguous();
  const int64_t rows = x.size(0), n = x.size(1);
  at::Tensor out = at::empty({rows}, x.options().dtype(at::kLong));
  const float* xp = x.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = xp + r * n;
      const int64_t index = row_argmax(row, n);
      const int64_t nan = index < 0 || std::isnan(row[index]) ? first_nan(row, n) : -1;
      op[r] = nan >= 0 ? nan : index;
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(folo_cpu, m) { m.def("argmax_rows(Tensor logits) -> Tensor"); }

TORCH_LIBRARY_IMPL(folo_cpu, CPU, m) { m.impl("argmax_rows", &argmax_rows); }

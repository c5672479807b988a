// float32 linear layers over weights stored in bf16, for AVX2 CPUs without
// native bf16 arithmetic: ``y = x W^T + b`` with x, y, b in float32.
//
// Why: on such a CPU a bf16 checkpoint runs in float32 (bf16 matmuls are several
// times slower there), and at decode batch sizes a float32 linear is bound by
// reading its 4-byte weights. Where every weight is exactly a bf16 value (the
// checkpoint was bf16), storing it as bf16 and widening in registers is lossless
// (a 16-bit shift) and halves the bytes each step streams; the arithmetic stays
// float32 FMA, so results match a float32 matmul up to summation order.
//
// Layout: the weight [N, K] becomes [N/16][K][16] bf16, each 16 features of one
// input feature in one 32-byte vector, ordered f0 f8 f1 f9 ... f7 f15, so 32-bit
// lane i holds feature i in its low half and feature 8 + i in its high half:
// a left shift by 16 widens features 0-7, a mask of the high half features 8-15,
// with no lane crossing. N is padded to 16 with zeros. The microkernel keeps MR
// rows of x by NT tiles (2 * MR * NT <= 12 accumulators of the 16 ymm registers)
// for the whole K, so each weight vector is widened once and used MR times.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace {

constexpr int64_t kTile = 16;            // output features per packed vector
constexpr int kMaxRows = 6;              // rows of x per microkernel call
constexpr int64_t kPanelBytes = 256 << 10;  // rows of x kept in L2 while a thread's weights stream

// Tiles per call for a block of MR rows: as many as the 12 accumulators allow.
constexpr int tiles_for(int mr) { return mr == 1 ? 4 : std::max(1, 6 / mr); }

template <int MR, int NT>
void microkernel(const float* x, int64_t x_stride, const uint16_t* w, int64_t k, const float* bias, float* y,
                 int64_t y_stride) {
  __m256 acc[MR][2 * NT];  // [row][2 * tile + half]
  #pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 16
    for (int j = 0; j < 2 * NT; ++j) acc[i][j] = _mm256_setzero_ps();
  const int64_t tile_stride = k * kTile;  // uint16 elements between tiles
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int64_t p = 0; p < k; ++p) {
    __m256 lo[NT], hi[NT];
    #pragma GCC unroll 16
    for (int j = 0; j < NT; ++j) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * tile_stride + p * kTile));
      lo[j] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
      hi[j] = _mm256_castsi256_ps(_mm256_and_si256(v, high));
    }
    #pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m256 xb = _mm256_broadcast_ss(x + i * x_stride + p);
      #pragma GCC unroll 16
      for (int j = 0; j < NT; ++j) {
        acc[i][2 * j] = _mm256_fmadd_ps(xb, lo[j], acc[i][2 * j]);
        acc[i][2 * j + 1] = _mm256_fmadd_ps(xb, hi[j], acc[i][2 * j + 1]);
      }
    }
  }
  #pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 16
    for (int j = 0; j < NT; ++j)
      #pragma GCC unroll 16
      for (int h = 0; h < 2; ++h) {
        __m256 v = acc[i][2 * j + h];
        const int64_t col = j * kTile + h * 8;
        if (bias != nullptr) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + col));
        _mm256_storeu_ps(y + i * y_stride + col, v);
      }
}

using Microkernel = void (*)(const float*, int64_t, const uint16_t*, int64_t, const float*, float*, int64_t);

template <int MR>
Microkernel pick_tiles(int nt) {
  constexpr int kMax = tiles_for(MR);
  if (nt >= 4 && kMax >= 4) return microkernel<MR, std::min(4, kMax)>;
  if (nt >= 3 && kMax >= 3) return microkernel<MR, std::min(3, kMax)>;
  if (nt >= 2 && kMax >= 2) return microkernel<MR, std::min(2, kMax)>;
  return microkernel<MR, 1>;
}

Microkernel pick(int mr, int nt) {
  switch (mr) {
    case 1: return pick_tiles<1>(nt);
    case 2: return pick_tiles<2>(nt);
    case 3: return pick_tiles<3>(nt);
    case 4: return pick_tiles<4>(nt);
    case 5: return pick_tiles<5>(nt);
    default: return pick_tiles<6>(nt);
  }
}

// Pack W [N, K] (float32 holding bf16 values, or bf16) into [ceil(N/16)][K][16] bf16, zero-padded.
at::Tensor pack_bf16w_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2, "pack_bf16w_weight: a 2-D weight");
  const at::Tensor w = weight.to(at::kBFloat16).contiguous();
  const int64_t n = w.size(0), k = w.size(1), tiles = (n + kTile - 1) / kTile;
  at::Tensor packed = at::zeros({tiles, k, kTile}, w.options());
  const auto* src = reinterpret_cast<const uint16_t*>(w.data_ptr());
  auto* dst = reinterpret_cast<uint16_t*>(packed.data_ptr());
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      for (int64_t r = 0; r < kTile && t * kTile + r < n; ++r) {
        const int64_t slot = r < 8 ? 2 * r : 2 * (r - 8) + 1;  // f0 f8 f1 f9 ... f7 f15
        for (int64_t c = 0; c < k; ++c) dst[(t * k + c) * kTile + slot] = src[(t * kTile + r) * k + c];
      }
  });
  return packed;
}

// y [M, out_features] = x [M, K] W^T + bias (float32), with W from pack_bf16w_weight.
at::Tensor bf16w_linear(const at::Tensor& x, const at::Tensor& packed, const std::optional<at::Tensor>& bias,
                        int64_t out_features) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "bf16w_linear: x must be a 2-D float32 tensor");
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == kTile && packed.scalar_type() == at::kBFloat16,
              "bf16w_linear: weight not packed");
  const int64_t m = x.size(0), k = x.size(1), tiles = packed.size(0);
  TORCH_CHECK(packed.size(1) == k, "bf16w_linear: x has ", k, " features, the weight ", packed.size(1));
  TORCH_CHECK(out_features <= tiles * kTile && out_features > (tiles - 1) * kTile, "bf16w_linear: bad out_features");
  const at::Tensor xin = x.contiguous();
  const int64_t padded_n = tiles * kTile;
  at::Tensor y = at::empty({m, padded_n}, x.options());
  at::Tensor bias_f;
  if (bias.has_value() && bias->defined()) {
    bias_f = at::zeros({padded_n}, x.options());
    bias_f.narrow(0, 0, out_features).copy_(*bias);
  }
  const float* xp = xin.data_ptr<float>();
  const auto* wp = reinterpret_cast<const uint16_t*>(packed.data_ptr());
  const float* bp = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  // Threads take contiguous runs of tiles; rows go in panels that stay in L2. Within
  // a panel, tile groups go outermost and every row block runs under them, so the
  // weight streams from memory once per panel and a group is reread from L1/L2.
  const int64_t panel_rows = std::max<int64_t>(kMaxRows, kPanelBytes / (k * 4) / kMaxRows * kMaxRows);
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t panel = 0; panel < m; panel += panel_rows) {
      const int64_t panel_end = std::min(m, panel + panel_rows);
      const int64_t group = tiles_for(static_cast<int>(std::min<int64_t>(kMaxRows, panel_end - panel)));
      for (int64_t t = begin; t < end; t += group) {
        const int64_t group_end = std::min(end, t + group);
        for (int64_t r = panel; r < panel_end; r += kMaxRows) {
          const int mr = static_cast<int>(std::min<int64_t>(kMaxRows, panel_end - r));
          for (int64_t tt = t; tt < group_end;) {
            const int nt = static_cast<int>(std::min<int64_t>(tiles_for(mr), group_end - tt));
            pick(mr, nt)(xp + r * k, k, wp + tt * k * kTile, k, bp == nullptr ? nullptr : bp + tt * kTile,
                         yp + r * padded_n + tt * kTile, padded_n);
            tt += nt;
          }
        }
      }
    }
  });
  return padded_n == out_features ? y : y.narrow(1, 0, out_features).contiguous();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(folo_cpu, m) {
  m.def("pack_bf16w_weight(Tensor weight) -> Tensor");
  m.def("bf16w_linear(Tensor x, Tensor packed_weight, Tensor? bias, int out_features) -> Tensor");
}

TORCH_LIBRARY_IMPL(folo_cpu, CPU, m) {
  m.impl("pack_bf16w_weight", &pack_bf16w_weight);
  m.impl("bf16w_linear", &bf16w_linear);
}

// bf16 linear layers for CPUs with AVX512-BF16: ``y = x W^T + b`` over a weight
// packed once, at load, into the layout ``vdpbf16ps`` consumes.
//
// Why: at decode batch sizes a linear is bound by reading its weight; oneDNN's
// prepacked path streams SmolLM2's weights at about 17 GB/s on a 2-core EPYC
// where a plain read loop reaches about 25 GB/s, and pays a fixed cost per call
// that small layers (a 192 x 576 projection is 10 us of bytes) cannot hide.
//
// Layout: the weight [N, K] becomes [N/16][K/2][16][2]: for each tile of 16
// output features and each pair of input features, one 64-byte vector holding
// the 16 features' two weights, so one ``vdpbf16ps`` with a broadcast pair of
// ``x`` adds two products into 16 output accumulators (no horizontal sums). N
// is padded to 16 and K to 2 with zeros. The microkernel keeps MR rows of x by
// NT tiles (MR * NT <= 24 fp32 accumulators) in registers for the whole K, so
// each weight vector loaded is used MR times; rows of x come in blocks of MR,
// tiles in groups of NT, threads split the tiles.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace {

constexpr int64_t kTile = 16;  // output features per vector
constexpr int kMaxRows = 6;    // rows of x per microkernel call
constexpr int kMaxTiles = 4;   // tiles per microkernel call
constexpr int64_t kPanelRows = 96;  // rows of x kept in L2 while the weight streams

template <int MR, int NT>
void microkernel(const uint16_t* x, int64_t x_stride, const uint16_t* w, int64_t k_pairs,
                 const float* bias, uint16_t* y, int64_t y_stride) {
  __m512 acc[MR][NT];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NT; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t tile_stride = k_pairs * kTile * 2;  // uint16 elements between tiles
  for (int64_t p = 0; p < k_pairs; ++p) {
    __m512bh wv[NT];
    for (int j = 0; j < NT; ++j)
      wv[j] = (__m512bh)_mm512_loadu_si512(w + j * tile_stride + p * kTile * 2);
    for (int i = 0; i < MR; ++i) {
      int32_t pair;
      std::memcpy(&pair, x + i * x_stride + 2 * p, sizeof(pair));
      const __m512bh xb = (__m512bh)_mm512_set1_epi32(pair);
      for (int j = 0; j < NT; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xb, wv[j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NT; ++j) {
      __m512 v = acc[i][j];
      if (bias != nullptr) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + j * kTile));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i * y_stride + j * kTile),
                          (__m256i)_mm512_cvtneps_pbh(v));
    }
}

using Microkernel = void (*)(const uint16_t*, int64_t, const uint16_t*, int64_t, const float*, uint16_t*, int64_t);

template <int MR>
Microkernel pick_tiles(int nt) {
  switch (nt) {
    case 1: return microkernel<MR, 1>;
    case 2: return microkernel<MR, 2>;
    case 3: return microkernel<MR, 3>;
    default: return microkernel<MR, 4>;
  }
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

// Pack W [N, K] (bf16, row-major) into [ceil(N/16)][ceil(K/2)][16][2], zero-padded.
at::Tensor pack_bf16_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kBFloat16, "pack_bf16_weight: a 2-D bf16 weight");
  const at::Tensor w = weight.contiguous();
  const int64_t n = w.size(0), k = w.size(1);
  const int64_t tiles = (n + kTile - 1) / kTile, k_pairs = (k + 1) / 2;
  at::Tensor packed = at::zeros({tiles, k_pairs, kTile, 2}, w.options());
  const auto* src = reinterpret_cast<const uint16_t*>(w.data_ptr());
  auto* dst = reinterpret_cast<uint16_t*>(packed.data_ptr());
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      for (int64_t r = 0; r < kTile && t * kTile + r < n; ++r)
        for (int64_t c = 0; c < k; ++c)
          dst[((t * k_pairs + c / 2) * kTile + r) * 2 + c % 2] = src[(t * kTile + r) * k + c];
  });
  return packed;
}

// y [M, out_features] = x [M, K] W^T + bias, with W from pack_bf16_weight.
at::Tensor bf16_linear(const at::Tensor& x, const at::Tensor& packed, const std::optional<at::Tensor>& bias,
                       int64_t out_features) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16, "bf16_linear: x must be a 2-D bf16 tensor");
  TORCH_CHECK(packed.dim() == 4 && packed.size(2) == kTile && packed.size(3) == 2, "bf16_linear: weight not packed");
  const int64_t m = x.size(0), k = x.size(1), tiles = packed.size(0), k_pairs = packed.size(1);
  TORCH_CHECK((k + 1) / 2 == k_pairs, "bf16_linear: x has ", k, " features, the weight ", 2 * k_pairs);
  TORCH_CHECK(out_features <= tiles * kTile && out_features > (tiles - 1) * kTile, "bf16_linear: bad out_features");
  // An odd K reads one pad element past each row: copy x into an even-width buffer.
  at::Tensor xin = (k % 2 == 0) ? x.contiguous() : at::zeros({m, k + 1}, x.options());
  if (k % 2 != 0) xin.narrow(1, 0, k).copy_(x);
  const int64_t padded_n = tiles * kTile;
  at::Tensor y = at::empty({m, padded_n}, x.options());
  at::Tensor bias_f;
  if (bias.has_value() && bias->defined()) {
    bias_f = at::zeros({padded_n}, x.options().dtype(at::kFloat));
    bias_f.narrow(0, 0, out_features).copy_(*bias);
  }
  const auto* xp = reinterpret_cast<const uint16_t*>(xin.data_ptr());
  const auto* wp = reinterpret_cast<const uint16_t*>(packed.data_ptr());
  const float* bp = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  auto* yp = reinterpret_cast<uint16_t*>(y.data_ptr());
  const int64_t x_stride = xin.size(1), tile_elems = k_pairs * kTile * 2;
  // Threads take contiguous runs of tiles. Rows go in panels of kPanelRows, so a
  // panel of x stays in L2 while the thread's tiles stream past it once.
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t panel = 0; panel < m; panel += kPanelRows) {
      const int64_t panel_end = std::min(m, panel + kPanelRows);
      for (int64_t t = begin; t < end; t += kMaxTiles) {
        const int nt = static_cast<int>(std::min<int64_t>(kMaxTiles, end - t));
        for (int64_t r = panel; r < panel_end; r += kMaxRows) {
          const int mr = static_cast<int>(std::min<int64_t>(kMaxRows, panel_end - r));
          pick(mr, nt)(xp + r * x_stride, x_stride, wp + t * tile_elems, k_pairs,
                       bp == nullptr ? nullptr : bp + t * kTile, yp + r * padded_n + t * kTile, padded_n);
        }
      }
    }
  });
  return padded_n == out_features ? y : y.narrow(1, 0, out_features).contiguous();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(folo_cpu, m) {
  m.def("pack_bf16_weight(Tensor weight) -> Tensor");
  m.def("bf16_linear(Tensor x, Tensor packed_weight, Tensor? bias, int out_features) -> Tensor");
}

TORCH_LIBRARY_IMPL(folo_cpu, CPU, m) {
  m.impl("pack_bf16_weight", &pack_bf16_weight);
  m.impl("bf16_linear", &bf16_linear);
}

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
//
// Where the CPU also has AMX (built with -march=native on such a CPU), inputs of
// 4 rows or more go to the tile unit instead: the same layout is exactly AMX's
// B-tile format (16 pairs of K rows x 16 features x 2), so no second weight copy
// is needed; 2 x 2 accumulator tiles cover 32 rows x 32 features, each A and B
// tile is used twice. On a 2-core Xeon (AMX-BF16) SmolLM2's linears take 11 ms at
// 32 rows and 25 ms at 128 against 59 and 186 ms on the vector path (oneDNN: 27, 47).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#if defined(__AMX_BF16__) && defined(__AMX_TILE__)
#include <sys/syscall.h>
#include <unistd.h>
#define FOLO_HAVE_AMX 1
#endif

namespace {

constexpr int64_t kTile = 16;  // output features per vector
constexpr int kMaxRows = 6;    // rows of x per microkernel call
constexpr int kMaxTiles = 4;   // tiles per microkernel call
constexpr int64_t kPanelRows = 96;  // rows of x kept in L2 while the weight streams
constexpr int64_t kAmxPanelRows = 256;  // the same on the tile unit, whose blocks are 32 rows

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

#ifdef FOLO_HAVE_AMX
constexpr int64_t kAmxMinRows = 4;  // below this the vector path streams the weight faster
constexpr int64_t kAmxKPairs = 16;   // K pairs per tile step (32 bf16 = one 64-byte tile row)

// Linux hands out the tile data state only on request, once per process.
bool amx_permitted() {
  static const bool ok = [] {
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: C[row block][feature tile] (fp32), 4-5: A row blocks, 6-7: B feature tiles.
void configure_tiles(int rows0, int rows1) {
  TileConfig cfg;
  const int rows[2] = {rows0, rows1};
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      cfg.rows[2 * i + j] = static_cast<uint8_t>(rows[i]);
      cfg.colsb[2 * i + j] = 64;
    }
    cfg.rows[4 + i] = static_cast<uint8_t>(rows[i]);
    cfg.colsb[4 + i] = 64;
    cfg.rows[6 + i] = kAmxKPairs;
    cfg.colsb[6 + i] = 64;
  }
  // GCC does not see that ldtilecfg reads the struct and may drop the stores above
  // (it did once configure_tiles was inlined into a small caller): a compiler barrier.
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

// One block of up to 32 rows of x by 2 feature tiles over the whole K (a multiple
// of 32). The tile intrinsics take register numbers as immediates, hence the unrolling.
template <bool TwoRowBlocks, bool TwoTiles>
void amx_block(const uint16_t* x, int64_t x_stride, const uint16_t* w, int64_t k_pairs, float* c) {
  const int64_t tile_stride = k_pairs * kTile * 2, x_bytes = x_stride * 2;
  _tile_zero(0);
  if (TwoTiles) _tile_zero(1);
  if (TwoRowBlocks) {
    _tile_zero(2);
    if (TwoTiles) _tile_zero(3);
  }
  for (int64_t p = 0; p < k_pairs; p += kAmxKPairs) {
    _tile_loadd(4, x + 2 * p, x_bytes);
    _tile_loadd(6, w + p * kTile * 2, 64);
    if (TwoTiles) _tile_loadd(7, w + tile_stride + p * kTile * 2, 64);
    _tile_dpbf16ps(0, 4, 6);
    if (TwoTiles) _tile_dpbf16ps(1, 4, 7);
    if (TwoRowBlocks) {
      _tile_loadd(5, x + 16 * x_stride + 2 * p, x_bytes);
      _tile_dpbf16ps(2, 5, 6);
      if (TwoTiles) _tile_dpbf16ps(3, 5, 7);
    }
  }
  // c is [32 rows][32 features] fp32.
  _tile_stored(0, c, 128);
  if (TwoTiles) _tile_stored(1, c + 16, 128);
  if (TwoRowBlocks) {
    _tile_stored(2, c + 16 * 32, 128);
    if (TwoTiles) _tile_stored(3, c + 16 * 32 + 16, 128);
  }
}

// y[rows, tiles * 16] = c + bias, converted to bf16.
void store_block(const float* c, int64_t rows, int64_t tiles, const float* bias, uint16_t* y, int64_t y_stride) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < tiles; ++j) {
      __m512 v = _mm512_loadu_ps(c + i * 32 + j * kTile);
      if (bias != nullptr) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + j * kTile));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i * y_stride + j * kTile),
                          (__m256i)_mm512_cvtneps_pbh(v));
    }
}

// One block of `rows` (1-32) rows of x by one or two feature tiles, stored to y.
void amx_block_rows(const uint16_t* x, int64_t x_stride, const uint16_t* w, int64_t k_pairs, bool two_tiles,
                    int64_t rows, float* c, const float* bias, uint16_t* y, int64_t y_stride) {
  if (rows > 16)
    two_tiles ? amx_block<true, true>(x, x_stride, w, k_pairs, c) : amx_block<true, false>(x, x_stride, w, k_pairs, c);
  else
    two_tiles ? amx_block<false, true>(x, x_stride, w, k_pairs, c) : amx_block<false, false>(x, x_stride, w, k_pairs, c);
  store_block(c, rows, two_tiles ? 2 : 1, bias, y, y_stride);
}

void configure_rows(int64_t rows) {
  const int rows0 = static_cast<int>(std::min<int64_t>(16, rows));
  configure_tiles(rows0, static_cast<int>(std::max<int64_t>(rows - rows0, 1)));
}

// Rows [begin_row, end_row) by tiles [t_begin, t_end). Tiles go outermost, two at a
// time, and every 32-row block of the panel runs under them, so the weight streams
// from memory once per panel and its tiles are reread from L1 (row blocks inner
// made the weight stream once per 32 rows: SmolLM2's LM head at 128 rows took 4x
// its 32-row time). A partial last block gets its own tile shape.
void amx_rows(const uint16_t* x, int64_t x_stride, const uint16_t* w, int64_t k_pairs, int64_t t_begin,
              int64_t t_end, int64_t begin_row, int64_t end_row, const float* bias, uint16_t* y, int64_t y_stride) {
  alignas(64) float c[32 * 32];
  const int64_t tile_elems = k_pairs * kTile * 2, rows = end_row - begin_row;
  const int64_t full_end = begin_row + rows / 32 * 32, tail = end_row - full_end;
  const bool full_blocks = full_end > begin_row;
  if (full_blocks) configure_rows(32);
  for (int64_t t = t_begin; t < t_end; t += 2) {
    const bool two_tiles = t + 1 < t_end;
    const uint16_t* wt = w + t * tile_elems;
    const float* bt = bias == nullptr ? nullptr : bias + t * kTile;
    for (int64_t r = begin_row; r < full_end; r += 32)
      amx_block_rows(x + r * x_stride, x_stride, wt, k_pairs, two_tiles, 32, c, bt, y + r * y_stride + t * kTile,
                     y_stride);
    if (tail > 0) {
      if (full_blocks || t == t_begin) configure_rows(tail);
      amx_block_rows(x + full_end * x_stride, x_stride, wt, k_pairs, two_tiles, tail, c, bt,
                     y + full_end * y_stride + t * kTile, y_stride);
      if (full_blocks) configure_rows(32);
    }
  }
  _tile_release();
}
#endif

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
  // Threads take contiguous runs of tiles. Rows go in panels (kPanelRows, or
  // kAmxPanelRows on the tile unit), so a panel of x stays in L2 while the thread's
  // tiles stream past it once.
#ifdef FOLO_HAVE_AMX
  // From 4 rows on every row goes to the tile unit (a partial tile is still faster
  // than the vector path: 10 against 17 ms for SmolLM2's linears at 8 rows); a K
  // that is not a multiple of 32 stays on the vector microkernels.
  const bool use_amx = m >= kAmxMinRows && k_pairs % kAmxKPairs == 0 && amx_permitted();
#else
  [[maybe_unused]] constexpr bool use_amx = false;
#endif
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    const int64_t panel_rows = use_amx ? kAmxPanelRows : kPanelRows;
    for (int64_t panel = 0; panel < m; panel += panel_rows) {
      const int64_t panel_end = std::min(m, panel + panel_rows);
#ifdef FOLO_HAVE_AMX
      if (use_amx) {
        amx_rows(xp, x_stride, wp, k_pairs, begin, end, panel, panel_end, bp, yp, padded_n);
        continue;
      }
#endif
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

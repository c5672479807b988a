// Paged decode attention for CPU: one query token per request, read through the block table.
//
// Each (request, kv head) pair is one task: its keys and values are read straight from the
// cache blocks (no gathered copy, no padding to the longest request), up to 32 rows at a time
// (float32 rows in place, others widened to float32 into an L1 buffer), then worked on with
// explicit AVX-512 or AVX2 vectors;
// scores and softmax in float32, the GQA group's queries sharing every key/value row. With a soft cap C
// (Gemma 2), each scaled score s becomes C * tanh(s / C) before the softmax.
// The same library holds the cache write (reshape_and_cache, at the end).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

// exp(x) for x <= 0 (scores minus their max) as a polynomial the compiler vectorises
// (std::exp is a scalar libm call, and a step makes tens of thousands of them):
// x = n ln2 + r with |r| <= ln2/2, exp(r) by its degree-6 Taylor polynomial (relative error
// below 2e-7, under bf16's and float32's own rounding of the scores), 2^n through the exponent bits.
#pragma omp declare simd
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float n = std::nearbyint(x * 1.44269504f);
  const float r = x - n * 0.693147181f;
  const float p = 1.f + r * (1.f + r * (0.5f + r * (1.f / 6 + r * (1.f / 24 + r * (1.f / 120 + r * (1.f / 720))))));
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// The widest float vector this build's ISA has (-march=native), and loads that widen the cache's
// bf16 / fp16 / fp32 elements to it: bf16 by a shift into the high half, fp16 by F16C. Without
// AVX2 the "vector" is one float and every loop below is plain scalar code.
namespace simd {
#if defined(__AVX512F__)
constexpr int64_t W = 16, kRegs = 32;  // lanes, vector registers
using V = __m512;
inline V zero() { return _mm512_setzero_ps(); }
inline V broadcast(float x) { return _mm512_set1_ps(x); }
inline V load(const float* p) { return _mm512_loadu_ps(p); }
inline V load(const c10::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
inline V load(const c10::Half* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline V add(V a, V b) { return _mm512_add_ps(a, b); }
inline float sum(V v) { return _mm512_reduce_add_ps(v); }
// out[0..3] = the sums of a, b, c and d: pairs interleaved and added, then the four 128-bit lanes.
inline void sum4(V a, V b, V c, V d, float* out) {
  const V ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));  // a b a b per lane
  const V cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  const V abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, 0x44), _mm512_shuffle_ps(ab, cd, 0xEE));  // a b c d
  const __m256 half = _mm256_add_ps(_mm512_castps512_ps256(abcd), _mm512_extractf32x8_ps(abcd, 1));
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1)));
}
inline void store(float* p, V v) { _mm512_storeu_ps(p, v); }
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
constexpr int64_t W = 8, kRegs = 16;
using V = __m256;
inline V zero() { return _mm256_setzero_ps(); }
inline V broadcast(float x) { return _mm256_set1_ps(x); }
inline V load(const float* p) { return _mm256_loadu_ps(p); }
inline V load(const c10::BFloat16* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}
inline V load(const c10::Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline V add(V a, V b) { return _mm256_add_ps(a, b); }
// out[0..3] = the sums of a, b, c and d: pairs interleaved and added, then the two 128-bit lanes.
inline void sum4(V a, V b, V c, V d, float* out) {
  const V ab = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
  const V cd = _mm256_add_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
  const V abcd = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, 0x44), _mm256_shuffle_ps(ab, cd, 0xEE));
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
}
inline float sum(V v) {
  const __m128 pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 two = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
  return _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)));
}
inline void store(float* p, V v) { _mm256_storeu_ps(p, v); }
#else
constexpr int64_t W = 1, kRegs = 16;
using V = float;
inline V zero() { return 0.f; }
inline V broadcast(float x) { return x; }
inline V load(const float* p) { return *p; }
inline V fma(V a, V b, V c) { return a * b + c; }
inline V add(V a, V b) { return a + b; }
inline float sum(V v) { return v; }
inline void sum4(V a, V b, V c, V d, float* out) { out[0] = a, out[1] = b, out[2] = c, out[3] = d; }
inline void store(float* p, V v) { *p = v; }
#endif
// Every other element type (float64; bf16 and fp16 in the scalar build) through float32.
template <typename T>
inline V load(const T* p) {
  float wide[W];
  for (int64_t i = 0; i < W; ++i) wide[i] = static_cast<float>(p[i]);
  return load(static_cast<const float*>(wide));
}
}  // namespace simd

// Query heads of a GQA group handled together: each key or value row loaded is used by all
// of them. The tile size is a template argument, so their accumulators are registers.
constexpr int64_t kGroupTile = 8;
// Cache rows are widened to float32 this many at a time into a per-thread buffer (16 KB at
// head size 128), so a block of any size is worked on from L1.
constexpr int64_t kChunkRows = 32;

// Asks for the head_size elements of each of a block's rows ahead of their use. Blocks sit
// wherever the block table says, so the hardware prefetchers cannot run ahead across them:
// with the KV of 30 layers in memory (not in the last-level cache) this took a 128-request
// SmolLM2 call from about 2.1 to 1.6 ms.
template <typename scalar_t>
inline void prefetch_block(const scalar_t* block, int64_t rows, int64_t tok_stride, int64_t head_size) {
  const char* row = reinterpret_cast<const char*>(block);
  const int64_t row_bytes = head_size * static_cast<int64_t>(sizeof(scalar_t));
  for (int64_t i = 0; i < rows; ++i, row += tok_stride * static_cast<int64_t>(sizeof(scalar_t)))
    for (int64_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(row + b);
}

// Calls f(row, n, t) for the positions [first, end) of one request and KV head in runs of at
// most kChunkRows positions inside one cache block (one block-table read per block): the run's
// first row, its length, and its index counting from 0 at ``first``. The next block is
// prefetched while this one is worked on.
template <typename scalar_t, typename F>
inline void for_each_run(const scalar_t* cache, const int32_t* blocks, int64_t block_size, int64_t blk_stride,
                         int64_t tok_stride, int64_t head_size, int64_t first, int64_t end, F&& f) {
  int64_t block = first / block_size, offset = first % block_size;
  for (int64_t pos = first; pos < end; ++block, offset = 0) {
    const scalar_t* base = cache + blocks[block] * blk_stride;
    const int64_t next_start = pos - offset + block_size;  // where the next block begins
    if (next_start < end)
      prefetch_block(cache + blocks[block + 1] * blk_stride, std::min(block_size, end - next_start), tok_stride,
                     head_size);
    for (const int64_t stop = std::min(end, next_start); pos < stop;) {
      const int64_t n = std::min(kChunkRows, stop - pos);
      f(base + offset * tok_stride, n, pos - first);
      pos += n;
      offset += n;
    }
  }
}

// n cache rows (tok_stride apart) as float32 rows of hp >= head_size elements, zero past
// head_size: the loops below then run whole vectors with no tails.
template <typename scalar_t>
inline void widen_rows(const scalar_t* row, int64_t n, int64_t tok_stride, int64_t head_size, int64_t hp, float* dst) {
  using simd::W;
  const int64_t vec_end = head_size / W * W;
  for (int64_t i = 0; i < n; ++i, row += tok_stride, dst += hp) {
    for (int64_t d = 0; d < vec_end; d += W) simd::store(dst + d, simd::load(row + d));
    for (int64_t d = vec_end; d < hp; ++d) dst[d] = d < head_size ? static_cast<float>(row[d]) : 0.f;
  }
}

// n cache rows as float32 rows of hp elements and their stride: float32 rows of a whole
// number of vectors are read in place (copying them cost a quarter of the kernel's time on
// AVX2), every other kind is widened into buf.
template <typename scalar_t>
inline std::pair<const float*, int64_t> as_float_rows(const scalar_t* row, int64_t n, int64_t tok_stride,
                                                      int64_t head_size, int64_t hp, float* buf) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (head_size == hp) return {row, tok_stride};
  }
  widen_rows(row, n, tok_stride, head_size, hp, buf);
  return {buf, hp};
}

// Scores of G queries (q: [G][hp]) against n float32 keys (k: n rows of hp, ks apart) into s[g * len + i]:
// four keys at a time per query, so one query load serves four dot products and four
// horizontal sums share one shuffle tree.
template <int64_t G>
inline void qk_run(const float* q, const float* k, int64_t ks, int64_t n, int64_t hp, float* s, int64_t len) {
  using simd::W;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float* k0 = k + i * ks;
    for (int64_t g = 0; g < G; ++g) {
      simd::V a0 = simd::zero(), a1 = simd::zero(), a2 = simd::zero(), a3 = simd::zero();
      for (int64_t d = 0; d < hp; d += W) {
        const simd::V qd = simd::load(q + g * hp + d);
        a0 = simd::fma(qd, simd::load(k0 + d), a0);
        a1 = simd::fma(qd, simd::load(k0 + ks + d), a1);
        a2 = simd::fma(qd, simd::load(k0 + 2 * ks + d), a2);
        a3 = simd::fma(qd, simd::load(k0 + 3 * ks + d), a3);
      }
      simd::sum4(a0, a1, a2, a3, s + g * len + i);
    }
  }
  for (; i < n; ++i) {
    for (int64_t g = 0; g < G; ++g) {
      simd::V a = simd::zero();
      for (int64_t d = 0; d < hp; d += W) a = simd::fma(simd::load(q + g * hp + d), simd::load(k + i * ks + d), a);
      s[g * len + i] = simd::sum(a);
    }
  }
}

// acc[g][d0 + c * W] += sum_i p[g * len + i] * v[i][d0 + c * W] for C vector slices of the head:
// the G * C accumulators stay in registers over the run and each broadcast weight serves C
// slices (one slice at a time re-broadcast every weight hp / W times: a quarter of the kernel).
template <int64_t G, int64_t C>
inline void pv_slices(const float* p, int64_t len, const float* v, int64_t vs, int64_t n, int64_t hp, float* acc) {
  using simd::W;
  simd::V part[G][C];
  for (int64_t g = 0; g < G; ++g)
    for (int64_t c = 0; c < C; ++c) part[g][c] = simd::load(acc + g * hp + c * W);
  for (int64_t i = 0; i < n; ++i) {
    simd::V vi[C];
    for (int64_t c = 0; c < C; ++c) vi[c] = simd::load(v + i * vs + c * W);
    for (int64_t g = 0; g < G; ++g) {
      const simd::V w = simd::broadcast(p[g * len + i]);
      for (int64_t c = 0; c < C; ++c) part[g][c] = simd::fma(w, vi[c], part[g][c]);
    }
  }
  for (int64_t g = 0; g < G; ++g)
    for (int64_t c = 0; c < C; ++c) simd::store(acc + g * hp + c * W, part[g][c]);
}

// pv_slices<G, c> for a slice count known only at run time (1..C).
template <int64_t G, int64_t C>
inline void pv_slices_n(int64_t c, const float* p, int64_t len, const float* v, int64_t vs, int64_t n, int64_t hp,
                        float* acc) {
  if constexpr (C > 1) {
    if (c < C) return pv_slices_n<G, C - 1>(c, p, len, v, vs, n, hp, acc);
  }
  pv_slices<G, C>(p, len, v, vs, n, hp, acc);
}

// acc[g] += sum_i p[g * len + i] * v[i] over n float32 values (v: n rows of hp, vs apart; acc: [G][hp]),
// in groups of as many vector slices as the registers hold (G * C accumulators, C values, a weight).
template <int64_t G>
inline void pv_run(const float* p, int64_t len, const float* v, int64_t vs, int64_t n, int64_t hp, float* acc) {
  constexpr int64_t C = std::max<int64_t>(1, (simd::kRegs - 1) / (G + 1));
  for (int64_t d = 0; d < hp; d += C * simd::W)
    pv_slices_n<G, C>(std::min(C, (hp - d) / simd::W), p, len, v + d, vs, n, hp, acc + d);
}

// The largest of x[0..n) through 16 running maxima, which the compiler keeps in vectors (a plain
// reduction, even under omp simd, stays one serial maxss chain: a tenth of the kernel on AVX2).
inline float max_of(const float* x, int64_t n) {
  constexpr int64_t L = 16;
  float part[L];
  std::fill_n(part, L, -INFINITY);
  int64_t t = 0;
  for (; t + L <= n; t += L)
    for (int64_t j = 0; j < L; ++j) part[j] = std::max(part[j], x[t + j]);
  float m = -INFINITY;
  for (; t < n; ++t) m = std::max(m, x[t]);
  for (int64_t j = 0; j < L; ++j) m = std::max(m, part[j]);
  return m;
}

// Where one task's keys and values are: a request's block table and one KV head's slice.
template <typename scalar_t>
struct KVView {
  const scalar_t* keys;
  const scalar_t* values;
  const int32_t* blocks;
  int64_t block_size, k_blk, k_tok, v_blk, v_tok;
  int64_t first, end;  // the positions attended
};

// Per-thread scratch: queries and accumulators [kGroupTile][hp], one run of widened rows, the scores.
struct Scratch {
  std::vector<float> q, acc, rows, scores;
  Scratch(int64_t hp) : q(kGroupTile * hp), acc(kGroupTile * hp), rows(kChunkRows * hp) {}
};

// G query heads of one GQA group (queries already scaled and widened in s.q) over one
// request's context: scores, soft cap, softmax, weighted values, written to out[g] rows.
template <int64_t G, typename scalar_t>
void attend_tile(const KVView<scalar_t>& kv, int64_t head_size, int64_t hp, float cap, Scratch& s,
                 scalar_t* const* out) {
  const int64_t len = kv.end - kv.first;
  s.scores.resize(G * len);
  float* scores = s.scores.data();
  for_each_run(kv.keys, kv.blocks, kv.block_size, kv.k_blk, kv.k_tok, head_size, kv.first, kv.end,
               [&](const scalar_t* row, int64_t n, int64_t t) {
    const auto [k, ks] = as_float_rows(row, n, kv.k_tok, head_size, hp, s.rows.data());
    qk_run<G>(s.q.data(), k, ks, n, hp, scores + t, len);
  });
  float sums[G];
  for (int64_t g = 0; g < G; ++g) {
    float* sg = scores + g * len;
    if (cap > 0.f) {
      for (int64_t t = 0; t < len; ++t) sg[t] = cap * std::tanh(sg[t] / cap);
    }
    const float m = max_of(sg, len);
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t t = 0; t < len; ++t) { sg[t] = exp_nonpositive(sg[t] - m); sum += sg[t]; }
    sums[g] = sum;
  }
  std::fill_n(s.acc.data(), G * hp, 0.f);
  for_each_run(kv.values, kv.blocks, kv.block_size, kv.v_blk, kv.v_tok, head_size, kv.first, kv.end,
               [&](const scalar_t* row, int64_t n, int64_t t) {
    const auto [v, vs] = as_float_rows(row, n, kv.v_tok, head_size, hp, s.rows.data());
    pv_run<G>(scores + t, len, v, vs, n, hp, s.acc.data());
  });
  for (int64_t g = 0; g < G; ++g) {
    const float inv = 1.f / sums[g];
    for (int64_t d = 0; d < head_size; ++d) out[g][d] = static_cast<scalar_t>(s.acc[g * hp + d] * inv);
  }
}

// attend_tile<tile> for a tile size known only at run time (1..kGroupTile).
template <typename scalar_t, int64_t G = kGroupTile>
void attend_tile_n(int64_t tile, const KVView<scalar_t>& kv, int64_t head_size, int64_t hp, float cap, Scratch& s,
                   scalar_t* const* out) {
  if constexpr (G > 1) {
    if (tile < G) return attend_tile_n<scalar_t, G - 1>(tile, kv, head_size, hp, cap, s, out);
  }
  attend_tile<G, scalar_t>(kv, head_size, hp, cap, s, out);
}

template <typename scalar_t>
void decode_kernel(const at::Tensor& query, const at::Tensor& key_cache, const at::Tensor& value_cache,
                   const at::Tensor& block_table, const at::Tensor& seq_lens, double scale, int64_t window,
                   double soft_cap, at::Tensor& out) {
  const int64_t num_reqs = query.size(0), num_heads = query.size(1), head_size = query.size(2);
  const int64_t num_kv_heads = key_cache.size(2);
  const int64_t group = num_heads / num_kv_heads;
  const int64_t q_stride_r = query.stride(0), q_stride_h = query.stride(1);
  const int64_t bt_stride = block_table.stride(0);
  const scalar_t* q_ptr = query.data_ptr<scalar_t>();
  const int32_t* bt_ptr = block_table.data_ptr<int32_t>();
  const int32_t* len_ptr = seq_lens.data_ptr<int32_t>();
  scalar_t* o_ptr = out.data_ptr<scalar_t>();
  const float fscale = static_cast<float>(scale), cap = static_cast<float>(soft_cap);

  const int64_t hp = (head_size + simd::W - 1) / simd::W * simd::W;
  at::parallel_for(0, num_reqs * num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    Scratch scratch(hp);
    scalar_t* rows[kGroupTile];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / num_kv_heads, kh = task % num_kv_heads;
      // The query sits at position len - 1 and sees the last ``window`` positions (all if 0);
      // keys before ``first`` are never read (their blocks may already be another request's).
      const int64_t last = len_ptr[r];
      const KVView<scalar_t> kv{
          key_cache.data_ptr<scalar_t>() + kh * key_cache.stride(2), value_cache.data_ptr<scalar_t>() + kh * value_cache.stride(2),
          bt_ptr + r * bt_stride, key_cache.size(1), key_cache.stride(0), key_cache.stride(1), value_cache.stride(0),
          value_cache.stride(1), window > 0 ? std::max<int64_t>(0, last - window) : 0, last};
      for (int64_t g0 = 0; g0 < group; g0 += kGroupTile) {
        const int64_t tile = std::min(kGroupTile, group - g0);
        for (int64_t g = 0; g < tile; ++g) {
          const int64_t head = kh * group + g0 + g;
          const scalar_t* src = q_ptr + r * q_stride_r + head * q_stride_h;
          for (int64_t d = 0; d < hp; ++d)
            scratch.q[g * hp + d] = d < head_size ? static_cast<float>(src[d]) * fscale : 0.f;
          rows[g] = o_ptr + (r * num_heads + head) * head_size;
        }
        attend_tile_n<scalar_t>(tile, kv, head_size, hp, cap, scratch, rows);
      }
    }
  });
}

at::Tensor paged_decode_attention(const at::Tensor& query, const at::Tensor& key_cache, const at::Tensor& value_cache,
                                  const at::Tensor& block_table, const at::Tensor& seq_lens, double scale,
                                  int64_t window, double soft_cap) {
  TORCH_CHECK(query.dim() == 3 && key_cache.dim() == 4 && value_cache.dim() == 4, "bad ranks");
  TORCH_CHECK(query.stride(2) == 1 && key_cache.stride(3) == 1 && value_cache.stride(3) == 1,
              "head_size must be the contiguous dimension");
  TORCH_CHECK(query.size(1) % key_cache.size(2) == 0, "num_heads must be a multiple of num_kv_heads");
  TORCH_CHECK(key_cache.scalar_type() == query.scalar_type() && value_cache.scalar_type() == query.scalar_type(),
              "query and cache dtypes differ");
  TORCH_CHECK(block_table.scalar_type() == at::kInt && seq_lens.scalar_type() == at::kInt,
              "block_table and seq_lens must be int32");
  TORCH_CHECK(block_table.size(0) == query.size(0) && seq_lens.size(0) == query.size(0),
              "one block-table row and one length per query");
  at::Tensor out = at::empty({query.size(0), query.size(1), query.size(2)}, query.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, query.scalar_type(), "paged_decode_attention", [&] {
    decode_kernel<scalar_t>(query, key_cache, value_cache, block_table.contiguous(), seq_lens.contiguous(), scale, window,
                              soft_cap, out);
  });
  return out;
}

// Store each new token's key and value at its cache slot (vLLM's reshape_and_cache).
// Why not index_copy_: for a decode step's 128 tokens of 3 x 64 bf16 it took about
// 85 us a call, two calls a layer; this is a row copy per token. A slot's row is
// contiguous in both caches ([num_blocks, block_size, kv_heads, head_size], the
// first two dimensions flattened); key and value may be strided views by token.
void reshape_and_cache(const at::Tensor& key, const at::Tensor& value, at::Tensor key_cache, at::Tensor value_cache,
                       const at::Tensor& slot_mapping) {
  TORCH_CHECK(key.dim() == 3 && value.sizes() == key.sizes() && key_cache.dim() == 4 &&
                  value_cache.sizes() == key_cache.sizes(), "reshape_and_cache: bad shapes");
  TORCH_CHECK(key.size(1) == key_cache.size(2) && key.size(2) == key_cache.size(3), "reshape_and_cache: head shapes differ");
  TORCH_CHECK(key.scalar_type() == key_cache.scalar_type() && value.scalar_type() == key_cache.scalar_type() &&
                  value_cache.scalar_type() == key_cache.scalar_type(), "reshape_and_cache: dtypes differ");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong && slot_mapping.size(0) == key.size(0),
              "reshape_and_cache: one int64 slot per token");
  const int64_t row = key.size(1) * key.size(2), slots = key_cache.size(0) * key_cache.size(1);
  for (const at::Tensor* cache : {&key_cache, &value_cache})
    TORCH_CHECK(cache->stride(3) == 1 && cache->stride(2) == key.size(2) && cache->stride(1) == row &&
                    cache->stride(0) == row * key_cache.size(1), "reshape_and_cache: cache blocks not contiguous");
  const at::Tensor k = key.stride(2) == 1 && key.stride(1) == key.size(2) ? key : key.contiguous();
  const at::Tensor v = value.stride(2) == 1 && value.stride(1) == value.size(2) ? value : value.contiguous();
  const at::Tensor slot = slot_mapping.contiguous();
  const int64_t* sp = slot.data_ptr<int64_t>();
  const int64_t tokens = key.size(0), bytes = row * key.element_size();
  for (int64_t t = 0; t < tokens; ++t)
    TORCH_CHECK(sp[t] >= 0 && sp[t] < slots, "reshape_and_cache: slot ", sp[t], " outside the cache");
  const auto* kp = static_cast<const char*>(k.data_ptr());
  const auto* vp = static_cast<const char*>(v.data_ptr());
  auto* kc = static_cast<char*>(key_cache.data_ptr());
  auto* vc = static_cast<char*>(value_cache.data_ptr());
  const int64_t k_stride = k.stride(0) * k.element_size(), v_stride = v.stride(0) * v.element_size();
  at::parallel_for(0, tokens, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      std::memcpy(kc + sp[t] * bytes, kp + t * k_stride, bytes);
      std::memcpy(vc + sp[t] * bytes, vp + t * v_stride, bytes);
    }
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(folo_cpu, m) {
  m.def("paged_decode_attention(Tensor query, Tensor key_cache, Tensor value_cache, Tensor block_table, "
        "Tensor seq_lens, float scale, int window, float soft_cap) -> Tensor");
  m.def("reshape_and_cache(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
        "Tensor slot_mapping) -> ()");
}

TORCH_LIBRARY_IMPL(folo_cpu, CPU, m) {
  m.impl("paged_decode_attention", &paged_decode_attention);
  m.impl("reshape_and_cache", &reshape_and_cache);
}

// Paged decode attention for CPU: one query token per request, read through the block table.
//
// Each (request, kv head) pair is one task: its keys and values are read once, straight
// from the cache blocks (no gathered copy, no padding to the longest request), scores and
// softmax in float32, the GQA group's queries sharing every key/value read. With a soft cap C
// (Gemma 2), each scaled score s becomes C * tanh(s / C) before the softmax.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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

template <typename scalar_t>
void decode_kernel(const at::Tensor& query, const at::Tensor& key_cache, const at::Tensor& value_cache,
                   const at::Tensor& block_table, const at::Tensor& seq_lens, double scale, int64_t window,
                   double soft_cap, at::Tensor& out) {
  const int64_t num_reqs = query.size(0), num_heads = query.size(1), head_size = query.size(2);
  const int64_t block_size = key_cache.size(1), num_kv_heads = key_cache.size(2);
  const int64_t group = num_heads / num_kv_heads;
  const int64_t q_stride_r = query.stride(0), q_stride_h = query.stride(1);
  const int64_t blk_stride = key_cache.stride(0), tok_stride = key_cache.stride(1), kvh_stride = key_cache.stride(2);
  const int64_t v_blk_stride = value_cache.stride(0), v_tok_stride = value_cache.stride(1),
                v_kvh_stride = value_cache.stride(2);
  const int64_t bt_stride = block_table.stride(0);
  const scalar_t* q_ptr = query.data_ptr<scalar_t>();
  const scalar_t* k_ptr = key_cache.data_ptr<scalar_t>();
  const scalar_t* v_ptr = value_cache.data_ptr<scalar_t>();
  const int32_t* bt_ptr = block_table.data_ptr<int32_t>();
  const int32_t* len_ptr = seq_lens.data_ptr<int32_t>();
  scalar_t* o_ptr = out.data_ptr<scalar_t>();
  const float fscale = static_cast<float>(scale), cap = static_cast<float>(soft_cap);

  at::parallel_for(0, num_reqs * num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> q(group * head_size), acc(group * head_size), row(head_size), sums(group), scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / num_kv_heads, kh = task % num_kv_heads;
      // The query sits at position len - 1 and sees the last ``window`` positions (all if 0);
      // keys before ``first`` are never read (their blocks may already be another request's).
      const int64_t first = window > 0 ? std::max<int64_t>(0, len_ptr[r] - window) : 0;
      const int64_t len = len_ptr[r] - first;
      const int32_t* blocks = bt_ptr + r * bt_stride;
      for (int64_t g = 0; g < group; ++g) {
        const scalar_t* src = q_ptr + r * q_stride_r + (kh * group + g) * q_stride_h;
        for (int64_t d = 0; d < head_size; ++d) q[g * head_size + d] = static_cast<float>(src[d]) * fscale;
      }
      scores.assign(group * len, 0.f);
      for (int64_t t = 0; t < len; ++t) {
        const int64_t pos = first + t;
        const scalar_t* k = k_ptr + blocks[pos / block_size] * blk_stride + (pos % block_size) * tok_stride + kh * kvh_stride;
        float* kf = row.data();
        for (int64_t d = 0; d < head_size; ++d) kf[d] = static_cast<float>(k[d]);
        for (int64_t g = 0; g < group; ++g) {
          const float* qg = q.data() + g * head_size;
          float s = 0.f;
#pragma omp simd reduction(+ : s)
          for (int64_t d = 0; d < head_size; ++d) s += qg[d] * kf[d];
          scores[g * len + t] = s;
        }
      }
      if (cap > 0.f) {
        for (float& s : scores) s = cap * std::tanh(s / cap);
      }
      for (int64_t g = 0; g < group; ++g) {
        float* sg = scores.data() + g * len;
        const float m = *std::max_element(sg, sg + len);
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t t = 0; t < len; ++t) { sg[t] = exp_nonpositive(sg[t] - m); sum += sg[t]; }
        sums[g] = sum;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t = 0; t < len; ++t) {
        const int64_t pos = first + t;
        const scalar_t* v = v_ptr + blocks[pos / block_size] * v_blk_stride + (pos % block_size) * v_tok_stride + kh * v_kvh_stride;
        float* vf = row.data();
        for (int64_t d = 0; d < head_size; ++d) vf[d] = static_cast<float>(v[d]);
        for (int64_t g = 0; g < group; ++g) {
          const float p = scores[g * len + t];
          float* ag = acc.data() + g * head_size;
#pragma omp simd
          for (int64_t d = 0; d < head_size; ++d) ag[d] += p * vf[d];
        }
      }
      for (int64_t g = 0; g < group; ++g) {
        scalar_t* dst = o_ptr + (r * num_heads + kh * group + g) * head_size;
        const float inv = 1.f / sums[g];
        for (int64_t d = 0; d < head_size; ++d) dst[d] = static_cast<scalar_t>(acc[g * head_size + d] * inv);
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

}  // namespace

TORCH_LIBRARY_FRAGMENT(folo_cpu, m) {
  m.def("paged_decode_attention(Tensor query, Tensor key_cache, Tensor value_cache, Tensor block_table, "
        "Tensor seq_lens, float scale, int window, float soft_cap) -> Tensor");
}

TORCH_LIBRARY_IMPL(folo_cpu, CPU, m) { m.impl("paged_decode_attention", &paged_decode_attention); }

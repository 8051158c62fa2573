// sage_attn prefill/extend attention for Hopper (sm_90a): INT8 + 16-bit Q·Kᵀ, 16-bit P·V, over
// SGLang's paged KV pool (page size 1), ragged batches, causal mask aligned to the end of each
// sequence.
//
// Scheme (the same as the Triton reference kernel in sage_attn/kernels.py): a head's channels are
// split by rotary frequency. The fast-rotating half goes through INT8 x INT8 -> int32 (one scale
// per query row, one per key; K smoothed by the mean of its sequence's first 64 keys, exact under
// softmax); the slow-rotating half, which keeps the large near-constant RoPE components, stays in
// the model's 16-bit type; P·V runs in fp16 with fp32 accumulation. Every
// quantity a row depends on is its own or fixed by the first 64 keys of its sequence, so a row's
// output is bitwise independent of how the batch was cut (radix hits, chunked prefill).
//
// Two kernels per layer:
//  * sage_pack_kernel: per key block and kv head, gathers the block's keys and values from the
//    pool through the slot table once and writes one contiguous "stage image" in exactly the
//    shared-memory layout the attention kernel consumes: the slow half of K (16-bit), V (16-bit),
//    the fast half of K minus the anchor mean quantized to INT8 (one scale per key), the scales.
//    Every query block of the sequence (and every q head of the kv head) reads it.
//  * sage_attn_sm90_kernel: one CTA per 128 query rows of one sequence and q head; warp
//    specialized: one thread of warpgroup 0 streams stage images with single bulk copies (copy
//    engine, mbarrier transaction counts) into a ring of shared-memory stages; warpgroups 1 and 2
//    each own 64 query rows: INT8 Q·Kᵀ (int32), converted with the row and key scales, then the
//    16-bit Q·Kᵀ accumulated on top on the tensor cores; online softmax in fp32 (exp2); fp16 P·V
//    with P straight from registers. Software-pipelined: P·V of block j-1 runs while block j's
//    scores are converted; the two consumer warpgroups take turns issuing their MMAs (named
//    barriers), so one's softmax runs while the other's MMAs occupy the tensor cores.
// v6 (development harness only; the overlay ships v3 until a candidate is measured on the GPU): v5 plus
// a power-of-two scale per query row. The row scale then leaves the per-score work: the INT8 half is
// converted as si x key scale in one FMA (magic-number int -> float folded into it), the 16-bit half of Q
// is stored divided by the row scale (exact: a power of two), and the scale re-enters through the
// softmax's exp2 constant (sm_scale·log2e·qs, exact). Costs up to one bit of the INT8 Q range (values
// within [64, 127] instead of reaching 127): the accuracy part of the harness measures it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "ptx.cuh"
#include "wgmma.cuh"

namespace sage_sm90 {

constexpr int kAnchor = 64;  // keys that fix a sequence's smoothing mean
constexpr int kBlockM = 128;  // query rows per CTA (2 consumer warpgroups x 64)
constexpr int kBlockN = 128;  // keys per pipeline stage
constexpr int kThreads = 384;  // producer warpgroup + 2 consumer warpgroups

// ---- 16-bit element type traits -----------------------------------------------------------------
template <typename T>
struct Elem;

// 8 x fp16 from 8 x T (clamped to the fp16 range; a bf16 value beyond 65504 is never seen in V).
__device__ __forceinline__ uint32_t clamp_pack_half2(float a, float b) {
  a = fminf(fmaxf(a, -65504.f), 65504.f);
  b = fminf(fmaxf(b, -65504.f), 65504.f);
  __half2 v = __floats2half2_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&v);
}

template <>
struct Elem<__nv_bfloat16> {
  __device__ static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static uint4 to_fp16x8(uint4 raw) {
    const __nv_bfloat162* v = reinterpret_cast<const __nv_bfloat162*>(&raw);
    uint4 r;
    r.x = clamp_pack_half2(__low2float(v[0]), __high2float(v[0]));
    r.y = clamp_pack_half2(__low2float(v[1]), __high2float(v[1]));
    r.z = clamp_pack_half2(__low2float(v[2]), __high2float(v[2]));
    r.w = clamp_pack_half2(__low2float(v[3]), __high2float(v[3]));
    return r;
  }
  __device__ static uint32_t pack(float a, float b) {
    __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  template <int N, int TRANS_B>
  __device__ static void mma(float* d, const uint32_t* a, uint64_t desc, int scale_d) {
    if constexpr (N == 128 && TRANS_B == 0) wgmma_bf16_n128(d, a, desc, scale_d);
    if constexpr (N == 128 && TRANS_B == 1) wgmma_bf16_n128_tb(d, a, desc, scale_d);
    if constexpr (N == 64 && TRANS_B == 0) wgmma_bf16_n64(d, a, desc, scale_d);
    if constexpr (N == 64 && TRANS_B == 1) wgmma_bf16_n64_tb(d, a, desc, scale_d);
  }
  __device__ static void mma_ss(float* d, uint64_t a_desc, uint64_t desc, int scale_d) {
    wgmma_bf16_n128_ss(d, a_desc, desc, scale_d);
  }
};

template <>
struct Elem<__half> {
  __device__ static float to_float(__half x) { return __half2float(x); }
  __device__ static uint4 to_fp16x8(uint4 raw) { return raw; }
  __device__ static uint32_t pack(float a, float b) {
    __half2 v = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  template <int N, int TRANS_B>
  __device__ static void mma(float* d, const uint32_t* a, uint64_t desc, int scale_d) {
    if constexpr (N == 128 && TRANS_B == 0) wgmma_f16_n128(d, a, desc, scale_d);
    if constexpr (N == 128 && TRANS_B == 1) wgmma_f16_n128_tb(d, a, desc, scale_d);
    if constexpr (N == 64 && TRANS_B == 0) wgmma_f16_n64(d, a, desc, scale_d);
    if constexpr (N == 64 && TRANS_B == 1) wgmma_f16_n64_tb(d, a, desc, scale_d);
  }
  __device__ static void mma_ss(float* d, uint64_t a_desc, uint64_t desc, int scale_d) {
    wgmma_f16_n128_ss(d, a_desc, desc, scale_d);
  }
};

// ---- tile geometry --------------------------------------------------------------------------------
template <int D_, typename T_>
struct Cfg {
  using T = T_;
  static constexpr int D = D_;
  static constexpr int DH = D_ / 2;  // channels per half (fast / slow)
  static constexpr int BM = kBlockM;
  static constexpr int BN = kBlockN;
  // Per stage: K slow half (16-bit), V (16-bit), K fast half (INT8), key scales (fp32).
  static constexpr int K16_BYTES = BN * DH * 2;
  static constexpr int V_BYTES = BN * D * 2;
  static constexpr int K8_BYTES = BN * DH;
  static constexpr int KS_BYTES = BN * 4;
  static constexpr int STAGE_BYTES = K16_BYTES + V_BYTES + K8_BYTES + KS_BYTES;
  static constexpr int STAGES = D_ == 128 ? 3 : 4;
  // Q of the CTA's 128 rows, quantized once by the consumers, read by wgmma as the A operand.
  static constexpr int Q8_BYTES = BM * DH;
  static constexpr int Q16_BYTES = BM * DH * 2;
  static constexpr int Q_OFFSET = STAGES * STAGE_BYTES;
  static constexpr int BAR_OFFSET = Q_OFFSET + Q8_BYTES + Q16_BYTES;
  static constexpr int SMEM_BYTES = BAR_OFFSET + 2 * STAGES * 8;
  static_assert(D_ == 64 || D_ == 128, "head_dim 64 or 128");
  static_assert(SMEM_BYTES <= 227 * 1024, "shared memory");
};

// Offsets in the no-swizzle ("interleaved") canonical layouts; a core matrix is 8 rows x 16 bytes,
// 128 contiguous bytes. K-major tiles (keys x channels, channels contiguous): core matrices along
// the channels are adjacent (LBO = 128), 8-key groups follow (SBO = 8 * row bytes).
__host__ __device__ constexpr int kmajor_offset(int key, int byte, int row_bytes) {
  return (key >> 3) * (row_bytes * 8) + (byte >> 4) * 128 + (key & 7) * 16 + (byte & 15);
}
// V (keys x channels as stored, read as the MN-major B operand of P·V): core matrices are
// 8 keys x 8 channels; 8-key groups adjacent (LBO = 128), 8-channel groups at BN * 16 (SBO).
__host__ __device__ constexpr int v_offset(int key, int ch, int bn) {
  return (ch >> 3) * (bn * 16) + (key >> 3) * 128 + (key & 7) * 16 + (ch & 7) * 2;
}

// Channel of the i-th fast / slow channel: NeoX pairs j with j + D/2 (slow: j >= D/4 of both
// halves); GPT-J pairs 2j with 2j + 1 (slow: the upper half of the channels).
template <int D>
__host__ __device__ inline int fast_channel(int i, bool neox) {
  return neox ? (i / (D / 4)) * (D / 2) + i % (D / 4) : i;
}
template <int D>
__host__ __device__ inline int slow_channel(int i, bool neox) {
  return neox ? (i / (D / 4)) * (D / 2) + D / 4 + i % (D / 4) : D / 2 + i;
}

// ---- parameters -------------------------------------------------------------------------------------
struct AttnParams {
  const void* q;  // [tokens, q_heads, D]
  const void* k_pool;  // [slots, kv_heads, D]
  const void* v_pool;
  void* out;  // [tokens, q_heads, D]
  const uint8_t* stages;  // [kv_heads, num_k_blocks, STAGE_BYTES] stage images (sage_pack_kernel)
  const int32_t* qo_indptr;  // [B + 1]
  const int32_t* kv_lens;  // [B]
  const int32_t* kblk_indptr;  // [B + 1]
  const int32_t* qblk_seq;  // [num_q_blocks]
  const int32_t* qblk_start;
  int64_t q_stride_tok, q_stride_head;
  int64_t o_stride_tok, o_stride_head;
  int group;  // q heads per kv head
  int num_k_blocks;
  float sm_scale_log2;  // softmax scale * log2(e)
  int neox;
  int causal;
  uint32_t desc_mode;  // development: bit0/1/2 swap LBO and SBO of the K8 / K16 / V descriptors
};

struct PackParams {
  const void* k_pool;  // [slots, kv_heads, D]
  const void* v_pool;
  const int32_t* slot_table;  // KV-pool slot of key pos of sequence b: slot_table[slot_row_off[b] + pos]
  const int64_t* slot_row_off;
  const int32_t* kv_lens;
  const int32_t* kblk_seq;
  const int32_t* kblk_start;
  uint8_t* stages;  // [kv_heads, num_k_blocks, STAGE_BYTES]
  int64_t k_stride_tok, k_stride_head;
  int64_t v_stride_tok, v_stride_head;
  int num_k_blocks;
  int neox;
};

__device__ __forceinline__ uint64_t desc_of(uint32_t addr, uint32_t lbo, uint32_t sbo, bool swap) {
  return swap ? smem_desc(addr, sbo, lbo) : smem_desc(addr, lbo, sbo);
}

// ---- pack: one stage image per key block and kv head ------------------------------------------------
template <class C>
__global__ void __launch_bounds__(128) sage_pack_kernel(const __grid_constant__ PackParams p) {
  using T = typename C::T;
  constexpr int D = C::D, DH = C::DH, BN = C::BN;
  static_assert(BN == 128, "one key per thread");
  __shared__ float anchor[kAnchor][DH + 1];
  __shared__ float mean[DH];

  const int g = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
  const int b = p.kblk_seq[g];
  const int kv_len = p.kv_lens[b];
  const int64_t row_off = p.slot_row_off[b];
  const T* kpool = static_cast<const T*>(p.k_pool) + static_cast<int64_t>(h) * p.k_stride_head;
  const T* vpool = static_cast<const T*>(p.v_pool) + static_cast<int64_t>(h) * p.v_stride_head;
  const int n_anchor = kv_len < kAnchor ? kv_len : kAnchor;

  {  // anchor keys -> shared memory (fp32), two threads per key
    const int key = tid & (kAnchor - 1), half = tid >> 6;
    if (key < n_anchor) {
      const T* row = kpool + static_cast<int64_t>(p.slot_table[row_off + key]) * p.k_stride_tok;
#pragma unroll
      for (int i = half * (DH / 2); i < (half + 1) * (DH / 2); i += 8) {
        const uint4 raw = *reinterpret_cast<const uint4*>(row + fast_channel<D>(i, p.neox));
        const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int e = 0; e < 8; ++e) anchor[key][i + e] = Elem<T>::to_float(v[e]);
      }
    }
  }
  __syncthreads();
  if (tid < DH) {  // fixed summation order: the same mean for every block of the sequence
    float s = 0.f;
    for (int k = 0; k < n_anchor; ++k) s += anchor[k][tid];
    mean[tid] = s / static_cast<float>(n_anchor);
  }
  __syncthreads();

  const int pos = p.kblk_start[g] + tid;  // this thread's key
  const bool valid = pos < kv_len;
  const int64_t slot = valid ? p.slot_table[row_off + pos] : 0;
  const T* krow = kpool + slot * p.k_stride_tok;
  const T* vrow = vpool + slot * p.v_stride_tok;
  uint8_t* img = p.stages + (static_cast<int64_t>(h) * p.num_k_blocks + g) * C::STAGE_BYTES;
  uint8_t* img_k16 = img;
  uint8_t* img_v = img_k16 + C::K16_BYTES;
  uint8_t* img_k8 = img_v + C::V_BYTES;
  float* img_ks = reinterpret_cast<float*>(img_k8 + C::K8_BYTES);
  const uint4 zero = make_uint4(0, 0, 0, 0);

  // slow half of K and V: copied (16-byte chunks) into the wgmma tile layouts
#pragma unroll
  for (int c = 0; c < DH / 8; ++c) {
    const uint4 raw = valid ? *reinterpret_cast<const uint4*>(krow + slow_channel<D>(8 * c, p.neox)) : zero;
    *reinterpret_cast<uint4*>(img_k16 + kmajor_offset(tid, 16 * c, 2 * DH)) = raw;
  }
  // V in fp16 whatever the model's type: P·V runs in fp16 (P in [0, 1] keeps 3 more mantissa bits
  // than bf16) and, unlike bf16, the fp16 MMA was measured to give bitwise the same rows whatever
  // V holds at masked positions (keys past a chunk's end are zeros here, real values in one shot).
#pragma unroll
  for (int c = 0; c < D / 8; ++c) {
    const uint4 raw = valid ? *reinterpret_cast<const uint4*>(vrow + 8 * c) : zero;
    *reinterpret_cast<uint4*>(img_v + v_offset(tid, 8 * c, BN)) = Elem<T>::to_fp16x8(raw);
  }

  // fast half of K: minus the anchor mean, INT8 with one scale per key
  float x[DH];
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < DH; i += 8) {
    const uint4 raw = valid ? *reinterpret_cast<const uint4*>(krow + fast_channel<D>(i, p.neox)) : zero;
    const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      x[i + e] = valid ? Elem<T>::to_float(v[e]) - mean[i + e] : 0.f;
      amax = fmaxf(amax, fabsf(x[i + e]));
    }
  }
  // One scale per key: it depends on this key (and the anchor) only, never on the batch cut.
  const float scale = fmaxf(amax, 1e-8f) / 127.f;
  const float inv = 1.f / scale;
#pragma unroll
  for (int c = 0; c < DH / 16; ++c) {
    uint32_t w[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int i = 16 * c + 4 * e;
      w[e] = pack_int8x4(__float2int_rn(x[i] * inv), __float2int_rn(x[i + 1] * inv), __float2int_rn(x[i + 2] * inv),
                         __float2int_rn(x[i + 3] * inv));
    }
    *reinterpret_cast<uint4*>(img_k8 + kmajor_offset(tid, 16 * c, DH)) = make_uint4(w[0], w[1], w[2], w[3]);
  }
  img_ks[tid] = valid ? scale : 0.f;
}

// ---- attention: producer (one thread of warpgroup 0) ------------------------------------------------
template <class C>
__device__ __forceinline__ void produce(const AttnParams& p, uint8_t* smem, uint64_t* full, uint64_t* empty,
                                        int b, int kvh, int n_blocks) {
  constexpr int S = C::STAGES;
  const uint8_t* src =
      p.stages + (static_cast<int64_t>(kvh) * p.num_k_blocks + p.kblk_indptr[b]) * static_cast<int64_t>(C::STAGE_BYTES);
  for (int j = 0; j < n_blocks; ++j) {
    const int s = j % S;
    mbar_wait(&empty[s], ((j / S) & 1) ^ 1);
    mbar_arrive_expect_tx(&full[s], C::STAGE_BYTES);
    bulk_copy_g2s(smem + s * C::STAGE_BYTES, src + static_cast<int64_t>(j) * C::STAGE_BYTES, C::STAGE_BYTES,
                  &full[s]);
  }
}

// ---- attention: consumers (warpgroups 1, 2) ---------------------------------------------------------
// Quantizes the fast half of this thread's two query rows to INT8 (one scale per row), keeps the
// slow half 16-bit, and writes both into the K-major A tiles of the warpgroup in shared memory.
template <class C>
__device__ __forceinline__ void stage_q(const AttnParams& p, int64_t tok_a, int64_t tok_b, bool ok_a, bool ok_b,
                                        int h, int row_a, int t, uint8_t* s_q8, uint8_t* s_q16, float& qs_a,
                                        float& qs_b) {
  using T = typename C::T;
  constexpr int D = C::D, DH = C::DH;
  const T* qa = static_cast<const T*>(p.q) + tok_a * p.q_stride_tok + static_cast<int64_t>(h) * p.q_stride_head;
  const T* qb = static_cast<const T*>(p.q) + tok_b * p.q_stride_tok + static_cast<int64_t>(h) * p.q_stride_head;
  float fa[DH / 32][2][4], fb[DH / 32][2][4];
  float amax_a = 0.f, amax_b = 0.f;
#pragma unroll
  for (int k = 0; k < DH / 32; ++k) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int ch = fast_channel<D>(32 * k + 16 * r + 4 * t, p.neox);
      uint2 ra = make_uint2(0, 0), rb = make_uint2(0, 0);
      if (ok_a) ra = *reinterpret_cast<const uint2*>(qa + ch);
      if (ok_b) rb = *reinterpret_cast<const uint2*>(qb + ch);
      const T* va = reinterpret_cast<const T*>(&ra);
      const T* vb = reinterpret_cast<const T*>(&rb);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        fa[k][r][e] = Elem<T>::to_float(va[e]);
        fb[k][r][e] = Elem<T>::to_float(vb[e]);
        amax_a = fmaxf(amax_a, fabsf(fa[k][r][e]));
        amax_b = fmaxf(amax_b, fabsf(fb[k][r][e]));
      }
    }
  }
  // the slow half, kept 16-bit: loaded first because its magnitude bounds the row scale from below
  float sa[DH / 16][2][2], sb[DH / 16][2][2];
  float smax_a = 0.f, smax_b = 0.f;
#pragma unroll
  for (int k = 0; k < DH / 16; ++k) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int ch = slow_channel<D>(16 * k + 8 * r + 2 * t, p.neox);
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        sa[k][r][e] = ok_a ? Elem<T>::to_float(qa[ch + e]) : 0.f;
        sb[k][r][e] = ok_b ? Elem<T>::to_float(qb[ch + e]) : 0.f;
        smax_a = fmaxf(smax_a, fabsf(sa[k][r][e]));
        smax_b = fmaxf(smax_b, fabsf(sb[k][r][e]));
      }
    }
  }
  // a row lives in the 4 threads of a quad
#pragma unroll
  for (int o = 1; o <= 2; o <<= 1) {
    amax_a = fmaxf(amax_a, __shfl_xor_sync(0xffffffffu, amax_a, o));
    amax_b = fmaxf(amax_b, __shfl_xor_sync(0xffffffffu, amax_b, o));
    smax_a = fmaxf(smax_a, __shfl_xor_sync(0xffffffffu, smax_a, o));
    smax_b = fmaxf(smax_b, __shfl_xor_sync(0xffffffffu, smax_b, o));
  }
  // Power-of-two row scale 2^e >= amax / 127 (frexp: r = m·2^e, m in [0.5, 1)), and >= slow max / 2^14 so
  // that the slow half divided by it stays inside fp16's range (65504) whatever the two halves' ratio.
  int e_a, e_b, g_a, g_b;
  frexpf(fmaxf(amax_a, 1e-8f) / 127.f, &e_a);
  frexpf(fmaxf(amax_b, 1e-8f) / 127.f, &e_b);
  frexpf(fmaxf(smax_a, 1e-8f) / 16384.f, &g_a);
  frexpf(fmaxf(smax_b, 1e-8f) / 16384.f, &g_b);
  e_a = max(e_a, g_a);
  e_b = max(e_b, g_b);
  qs_a = ldexpf(1.f, e_a);
  qs_b = ldexpf(1.f, e_b);
  const float inv_a = ldexpf(1.f, -e_a), inv_b = ldexpf(1.f, -e_b);
  const int row_b = row_a + 8;
#pragma unroll
  for (int k = 0; k < DH / 32; ++k) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int byte = 32 * k + 16 * r + 4 * t;
      *reinterpret_cast<uint32_t*>(s_q8 + kmajor_offset(row_a, byte, DH)) =
          pack_int8x4(__float2int_rn(fa[k][r][0] * inv_a), __float2int_rn(fa[k][r][1] * inv_a),
                      __float2int_rn(fa[k][r][2] * inv_a), __float2int_rn(fa[k][r][3] * inv_a));
      *reinterpret_cast<uint32_t*>(s_q8 + kmajor_offset(row_b, byte, DH)) =
          pack_int8x4(__float2int_rn(fb[k][r][0] * inv_b), __float2int_rn(fb[k][r][1] * inv_b),
                      __float2int_rn(fb[k][r][2] * inv_b), __float2int_rn(fb[k][r][3] * inv_b));
    }
  }
#pragma unroll
  for (int k = 0; k < DH / 16; ++k) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int i = 16 * k + 8 * r + 2 * t;
      // the 16-bit half divided by the row scale (a power of two: exact in bf16 and fp16)
      *reinterpret_cast<uint32_t*>(s_q16 + kmajor_offset(row_a, 2 * i, 2 * DH)) =
          Elem<T>::pack(sa[k][r][0] * inv_a, sa[k][r][1] * inv_a);
      *reinterpret_cast<uint32_t*>(s_q16 + kmajor_offset(row_b, 2 * i, 2 * DH)) =
          Elem<T>::pack(sb[k][r][0] * inv_b, sb[k][r][1] * inv_b);
    }
  }
}

template <class C>
__device__ __forceinline__ void consume(const AttnParams& p, uint8_t* smem, uint64_t* full, uint64_t* empty, int h,
                                        int m0, int q_first, int q_len, int kv_len, int n_blocks, int cw, int tid) {
  using T = typename C::T;
  constexpr int D = C::D, DH = C::DH, BN = C::BN, S = C::STAGES;
  constexpr int NS = BN / 2;  // score accumulators per thread (m64 x n128)
  constexpr int NO = D / 2;  // output accumulators per thread
  const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int prefix = kv_len - q_len;
  const int row_a = m0 + 64 * cw + 16 * warp + g;  // row among the sequence's new tokens
  const int row_b = row_a + 8;
  const bool swap_k8 = p.desc_mode & 1, swap_k16 = p.desc_mode & 2, swap_v = p.desc_mode & 4;

  // Q tiles of this warpgroup (64 rows) in shared memory: the A operand of both Q·Kᵀ MMAs
  uint8_t* s_q8 = smem + C::Q_OFFSET + cw * 64 * DH;
  uint8_t* s_q16 = smem + C::Q_OFFSET + C::Q8_BYTES + cw * 64 * 2 * DH;
  float qs_a, qs_b;
  stage_q<C>(p, q_first + row_a, q_first + row_b, row_a < q_len, row_b < q_len, h, 16 * warp + g, t, s_q8, s_q16,
             qs_a, qs_b);
  fence_proxy_async();  // generic-proxy stores read next by wgmma (async proxy)
  named_sync(3 + cw, 128);
  const uint32_t a_q8 = smem_addr(s_q8), a_q16 = smem_addr(s_q16);

  float o[NO];
#pragma unroll
  for (int i = 0; i < NO; ++i) o[i] = 0.f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
  // scores are kept divided by the row's (power-of-two) scale: it re-enters here, exactly
  const float sl2_a = p.sm_scale_log2 * qs_a, sl2_b = p.sm_scale_log2 * qs_b;
  // blocks every row of this warpgroup sees in full (no mask needed)
  const int first_row = m0 + 64 * cw;
  const int lim = p.causal ? min(prefix + first_row + 1, kv_len) : kv_len;
  const int n_full = lim / BN;
  const int diag_a = p.causal ? prefix + row_a : kv_len;  // last visible key of each row
  const int diag_b = p.causal ? prefix + row_b : kv_len;

  // Last key any row of this warpgroup sees: later blocks are released without compute.
  const int wg_last_key = p.causal ? min(prefix + first_row + 63, kv_len - 1) : kv_len - 1;
  const int n_wg = min(n_blocks, wg_last_key / BN + 1);  // >= 1: every row sees key 0

  // Software pipeline inside the warpgroup, turns between the two warpgroups (FA3-style ping-pong).
  // Turn j of a warpgroup (named barrier 1 + cw = "cw may issue") issues Q·Kᵀ(j) and P·V(j-1):
  // the INT8 part first, then P·V(j-1) runs on the tensor cores while the int32 scores are
  // converted, then the 16-bit part accumulates onto them. The turn then passes to the other
  // warpgroup, and this one runs the softmax of block j while the other's MMAs execute.
  const int my_bar = 1 + cw, other_bar = 2 - cw;
  if (cw == 1) named_arrive(1, 256);  // warpgroup 0 goes first

  uint32_t pf[BN / 16][4];  // P of the previous block as fp16 A fragments
  float sf[NS];  // scores of the current block (fp32)
  uint32_t si[NS];  // their INT8 part (int32)

  auto stage_ptr = [&](int j) { return smem + (j % S) * C::STAGE_BYTES; };
  // Q8 · K8ᵀ(j) -> si (one commit group)
  auto issue_qk8 = [&](int j) {
    const uint32_t a_k8 = smem_addr(stage_ptr(j)) + C::K16_BYTES + C::V_BYTES;
#pragma unroll
    for (int k = 0; k < DH / 32; ++k) {
      wgmma_s8_n128_ss(si, smem_desc(a_q8 + 256 * k, 128, DH * 8), desc_of(a_k8 + 256 * k, 128, DH * 8, swap_k8),
                       k > 0);
    }
    wgmma_commit();
  };
  // O += P(j) · V(j) (one commit group)
  auto issue_pv = [&](int j) {
    const uint32_t a_v = smem_addr(stage_ptr(j)) + C::K16_BYTES;
#pragma unroll
    for (int k = 0; k < BN / 16; ++k) {
      Elem<__half>::template mma<D, 1>(o, pf[k], desc_of(a_v + 256 * k, 128, BN * 16, swap_v), 1);
    }
    wgmma_commit();
  };
  // int32 x row scale x key scale -> fp32, then += Q16 · K16ᵀ(j) on the tensor cores (one group)
  auto convert_and_issue_qk16 = [&](int j) {
    uint8_t* st = stage_ptr(j);
    const float* s_ks = reinterpret_cast<const float*>(st + C::K16_BYTES + C::V_BYTES + C::K8_BYTES);
#pragma unroll
    for (int c = 0; c < BN / 8; ++c) {
      // (si + magic as float - magic) x ks in one FMA; the rounding of magic x ks is ~0.75 of one unit of
      // the int32 product sum (|si| reaches ~10^5-10^6): negligible, and the same for every batch cut.
      const float2 kk = *reinterpret_cast<const float2*>(s_ks + 8 * c + 2 * t);
      const float bx = -12582912.0f * kk.x, by = -12582912.0f * kk.y;
      sf[4 * c + 0] = fmaf(__int_as_float(static_cast<int32_t>(si[4 * c + 0]) + 0x4B400000), kk.x, bx);
      sf[4 * c + 1] = fmaf(__int_as_float(static_cast<int32_t>(si[4 * c + 1]) + 0x4B400000), kk.y, by);
      sf[4 * c + 2] = fmaf(__int_as_float(static_cast<int32_t>(si[4 * c + 2]) + 0x4B400000), kk.x, bx);
      sf[4 * c + 3] = fmaf(__int_as_float(static_cast<int32_t>(si[4 * c + 3]) + 0x4B400000), kk.y, by);
    }
    wgmma_fence();
    const uint32_t a_k16 = smem_addr(st);
#pragma unroll
    for (int k = 0; k < DH / 16; ++k) {
      Elem<T>::mma_ss(sf, smem_desc(a_q16 + 256 * k, 128, 16 * DH), desc_of(a_k16 + 256 * k, 128, 16 * DH, swap_k16),
                      1);
    }
    wgmma_commit();
  };
  // mask, online softmax of block j -> pf, and the rescale of O
  auto softmax = [&](int j) {
    if (j >= n_full) {  // causal diagonal / sequence end
#pragma unroll
      for (int i = 0; i < NS; ++i) {
        const int key = j * BN + 8 * (i >> 2) + 2 * t + (i & 1);
        const int diag = (i & 2) ? diag_b : diag_a;
        if (key >= kv_len || key > diag) sf[i] = -INFINITY;
      }
    }
    // row a = accumulators i % 4 < 2, row b = the others
    float mx_a = m_a, mx_b = m_b;
#pragma unroll
    for (int i = 0; i < NS; i += 4) {
      mx_a = fmaxf(mx_a, fmaxf(sf[i], sf[i + 1]));
      mx_b = fmaxf(mx_b, fmaxf(sf[i + 2], sf[i + 3]));
    }
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
    const float base_a = mx_a == -INFINITY ? 0.f : mx_a * sl2_a;
    const float base_b = mx_b == -INFINITY ? 0.f : mx_b * sl2_b;
    // (m - m_new) first: exactly 0 when the max did not move, so alpha is exactly 1 and a block a
    // row does not see leaves o and l bit for bit unchanged (m·s - m_new·s would be contracted into
    // an FMA whose rounding residue makes alpha 1 ± 1 ulp: rows then depended on how many masked
    // blocks their CTA visited, i.e. on where the batch was cut). Every row sees key 0, so m is
    // finite from block 0 on and -inf - finite gives alpha = 0 on the first block.
    const float alpha_a = fast_exp2((m_a - mx_a) * sl2_a);
    const float alpha_b = fast_exp2((m_b - mx_b) * sl2_b);
    m_a = mx_a;
    m_b = mx_b;
    float sum_a = 0.f, sum_b = 0.f;
#pragma unroll
    for (int k = 0; k < BN / 16; ++k) {
      float pv[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const bool is_b = e & 2;
        pv[e] = fast_exp2(fmaf(sf[8 * k + e], is_b ? sl2_b : sl2_a, is_b ? -base_b : -base_a));
        if (is_b) {
          sum_b += pv[e];
        } else {
          sum_a += pv[e];
        }
      }
      pf[k][0] = Elem<__half>::pack(pv[0], pv[1]);
      pf[k][1] = Elem<__half>::pack(pv[2], pv[3]);
      pf[k][2] = Elem<__half>::pack(pv[4], pv[5]);
      pf[k][3] = Elem<__half>::pack(pv[6], pv[7]);
    }
    l_a = l_a * alpha_a + sum_a;
    l_b = l_b * alpha_b + sum_b;
    // Rescale O only when some row's max moved (multiplying by an exact 1 changes nothing).
    if (__any_sync(0xffffffffu, alpha_a != 1.f || alpha_b != 1.f)) {
#pragma unroll
      for (int i = 0; i < NO; ++i) o[i] *= (i & 2) ? alpha_b : alpha_a;
    }
  };
  auto pin_scores = [&]() {
#pragma unroll
    for (int i = 0; i < NS; ++i) pin(sf[i]);
  };
  auto pin_int = [&]() {  // orders reads of si after the wait (the asm writes it asynchronously)
#pragma unroll
    for (int i = 0; i < NS; ++i) pin(si[i]);
  };
  auto pin_out = [&]() {
#pragma unroll
    for (int i = 0; i < NO; ++i) pin(o[i]);
  };
  auto release = [&](int j) {
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[j % S]);  // this warp is done with block j
  };

  // prologue: turn 0 = Q·Kᵀ(0)
  mbar_wait(&full[0], 0);
  named_sync(my_bar, 256);
  wgmma_fence();
  issue_qk8(0);
  named_arrive(other_bar, 256);
  pin_int();
  wgmma_wait<0>();
  pin_int();
  convert_and_issue_qk16(0);
  wgmma_wait<0>();
  pin_scores();
  softmax(0);

  // steady state: turn j = Q·Kᵀ(j) and P·V(j - 1)
  for (int j = 1; j < n_wg; ++j) {
    mbar_wait(&full[j % S], (j / S) & 1);
    named_sync(my_bar, 256);
    wgmma_fence();
    issue_qk8(j);
    issue_pv(j - 1);
    named_arrive(other_bar, 256);  // v5: the turn is the issue only
    pin_out();
    pin_int();
    wgmma_wait<1>();  // the INT8 scores; P·V(j - 1) keeps the tensor cores busy meanwhile
    pin_int();
    convert_and_issue_qk16(j);
    wgmma_wait<0>();
    pin_out();
    pin_scores();
    release(j - 1);
    softmax(j);
  }

  // epilogue: the last P·V
  named_sync(my_bar, 256);
  wgmma_fence();
  issue_pv(n_wg - 1);
  named_arrive(other_bar, 256);
  wgmma_wait<0>();
  pin_out();
  release(n_wg - 1);

  // Blocks no row of this warpgroup sees: keep the turns balanced and hand the stages back.
  for (int j = n_wg; j < n_blocks; ++j) {
    const int s = j % S;
    mbar_wait(&full[s], (j / S) & 1);
    named_sync(my_bar, 256);
    named_arrive(other_bar, 256);
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[s]);
  }
  if (cw == 0) named_sync(my_bar, 256);  // the arrival warpgroup 1 made in its last turn

  l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
  l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
  const float inv_a = l_a > 0.f ? 1.f / l_a : 0.f;
  const float inv_b = l_b > 0.f ? 1.f / l_b : 0.f;
  T* out = static_cast<T*>(p.out) + static_cast<int64_t>(h) * p.o_stride_head;
  T* out_a = out + static_cast<int64_t>(q_first + row_a) * p.o_stride_tok;
  T* out_b = out + static_cast<int64_t>(q_first + row_b) * p.o_stride_tok;
#pragma unroll
  for (int c = 0; c < D / 8; ++c) {
    const int col = 8 * c + 2 * t;
    if (row_a < q_len) *reinterpret_cast<uint32_t*>(out_a + col) = Elem<T>::pack(o[4 * c] * inv_a, o[4 * c + 1] * inv_a);
    if (row_b < q_len) {
      *reinterpret_cast<uint32_t*>(out_b + col) = Elem<T>::pack(o[4 * c + 2] * inv_b, o[4 * c + 3] * inv_b);
    }
  }
}

template <class C>
__global__ void __launch_bounds__(kThreads, 1) sage_attn_sm90_kernel(const __grid_constant__ AttnParams p) {
  extern __shared__ __align__(128) uint8_t smem[];
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + C::BAR_OFFSET);
  uint64_t* empty = full + C::STAGES;
  const int tid = threadIdx.x;
  const int wg = tid >> 7;
  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < C::STAGES; ++s) {
      mbar_init(&full[s], 1);  // the producer's arrive.expect_tx; the bulk copy completes the bytes
      mbar_init(&empty[s], 8);  // one arrival per consumer warp
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  // q head fastest: CTAs start heaviest query block first across all heads (the plan's order),
  // and the q heads of one kv head run side by side on the same stage images (L2 reuse).
  const int h = blockIdx.x;
  const int b = p.qblk_seq[blockIdx.y];
  const int m0 = p.qblk_start[blockIdx.y];
  const int q_first = p.qo_indptr[b];
  const int q_len = p.qo_indptr[b + 1] - q_first;
  const int kv_len = p.kv_lens[b];
  const int end = p.causal ? min(kv_len, kv_len - q_len + m0 + C::BM) : kv_len;
  const int n_blocks = (end + C::BN - 1) / C::BN;

  if (wg == 0) {
    setmaxnreg_dec<24>();  // one thread issues bulk copies (check_regs.py checks the SASS)
    if (tid == 0) produce<C>(p, smem, full, empty, b, h / p.group, n_blocks);
  } else {
    setmaxnreg_inc<240>();
    consume<C>(p, smem, full, empty, h, m0, q_first, q_len, kv_len, n_blocks, wg - 1, tid - 128 * wg);
  }
}

// ---- host launchers (raw pointers; used by the TVM-FFI entry and the stand-alone harness) ------
template <int D, typename T>
inline cudaError_t launch_pack(const PackParams& p, int num_k_blocks, int num_kv_heads, cudaStream_t stream) {
  using C = Cfg<D, T>;
  if (num_k_blocks == 0) return cudaSuccess;
  sage_pack_kernel<C><<<dim3(num_k_blocks, num_kv_heads), 128, 0, stream>>>(p);
  return cudaGetLastError();
}

template <int D, typename T>
inline cudaError_t launch_attn(const AttnParams& p, int num_q_blocks, int num_q_heads, cudaStream_t stream) {
  using C = Cfg<D, T>;
  if (num_q_blocks == 0) return cudaSuccess;
  if (num_q_blocks > 65535) return cudaErrorInvalidConfiguration;  // grid.y: 8M new tokens per batch
  auto kernel = sage_attn_sm90_kernel<C>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM_BYTES);
  if (err != cudaSuccess) return err;
  kernel<<<dim3(num_q_heads, num_q_blocks), kThreads, C::SMEM_BYTES, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace sage_sm90

// TVM-FFI entry points of the sm90 sage_attn kernels for SGLang's JIT framework (load_jit). One
// module per (head_dim, 16-bit type): ``sage_attn_sm90.py`` instantiates ffi_pack / ffi_attn with
// make_cpp_args. The Python side validates shapes and dtypes and passes strides and the CUDA stream;
// here only launch errors are turned into exceptions.
#pragma once

#include <sgl_kernel/utils.h>  // host::RuntimeCheck

#include <dlpack/dlpack.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/function.h>  // TVM_FFI_DLL_EXPORT_TYPED_FUNC in the wrappers load_jit appends

#include <cstdint>

#include "kernel.cuh"

namespace sage_sm90 {

template <typename T>
inline const T* cptr(const tvm::ffi::TensorView& t) {
  return static_cast<const T*>(t.data_ptr());
}

inline void check_launch(cudaError_t err, const char* what) {
  host::RuntimeCheck(err == cudaSuccess, "sage_attn_sm90 ", what, " launch failed: ", cudaGetErrorString(err));
}

// Gathers every key block of the batch into stage images (see sage_pack_kernel).
template <int D, typename T>
void ffi_pack(
    tvm::ffi::TensorView k_pool,
    tvm::ffi::TensorView v_pool,
    tvm::ffi::TensorView slot_table,
    tvm::ffi::TensorView slot_row_off,
    tvm::ffi::TensorView kv_lens,
    tvm::ffi::TensorView kblk_seq,
    tvm::ffi::TensorView kblk_start,
    tvm::ffi::TensorView stages,
    int64_t k_stride_tok,
    int64_t k_stride_head,
    int64_t v_stride_tok,
    int64_t v_stride_head,
    int64_t num_k_blocks,
    int64_t num_kv_heads,
    int64_t neox,
    int64_t stream) {
  PackParams p{};
  p.k_pool = k_pool.data_ptr();
  p.v_pool = v_pool.data_ptr();
  p.slot_table = cptr<int32_t>(slot_table);
  p.slot_row_off = cptr<int64_t>(slot_row_off);
  p.kv_lens = cptr<int32_t>(kv_lens);
  p.kblk_seq = cptr<int32_t>(kblk_seq);
  p.kblk_start = cptr<int32_t>(kblk_start);
  p.stages = static_cast<uint8_t*>(stages.data_ptr());
  p.k_stride_tok = k_stride_tok;
  p.k_stride_head = k_stride_head;
  p.v_stride_tok = v_stride_tok;
  p.v_stride_head = v_stride_head;
  p.num_k_blocks = static_cast<int>(num_k_blocks);
  p.neox = static_cast<int>(neox);
  check_launch(
      launch_pack<D, T>(p, static_cast<int>(num_k_blocks), static_cast<int>(num_kv_heads),
                        reinterpret_cast<cudaStream_t>(stream)),
      "pack");
}

// Attention of every query block of the plan over the stage images.
template <int D, typename T>
void ffi_attn(
    tvm::ffi::TensorView q,
    tvm::ffi::TensorView out,
    tvm::ffi::TensorView stages,
    tvm::ffi::TensorView qo_indptr,
    tvm::ffi::TensorView kv_lens,
    tvm::ffi::TensorView kblk_indptr,
    tvm::ffi::TensorView qblk_seq,
    tvm::ffi::TensorView qblk_start,
    int64_t q_stride_tok,
    int64_t q_stride_head,
    int64_t o_stride_tok,
    int64_t o_stride_head,
    int64_t num_q_blocks,
    int64_t num_q_heads,
    int64_t group,
    int64_t num_k_blocks,
    double sm_scale,
    int64_t neox,
    int64_t causal,
    int64_t stream) {
  AttnParams p{};
  p.q = q.data_ptr();
  p.out = out.data_ptr();
  p.stages = cptr<uint8_t>(stages);
  p.qo_indptr = cptr<int32_t>(qo_indptr);
  p.kv_lens = cptr<int32_t>(kv_lens);
  p.kblk_indptr = cptr<int32_t>(kblk_indptr);
  p.qblk_seq = cptr<int32_t>(qblk_seq);
  p.qblk_start = cptr<int32_t>(qblk_start);
  p.q_stride_tok = q_stride_tok;
  p.q_stride_head = q_stride_head;
  p.o_stride_tok = o_stride_tok;
  p.o_stride_head = o_stride_head;
  p.group = static_cast<int>(group);
  p.num_k_blocks = static_cast<int>(num_k_blocks);
  p.sm_scale_log2 = static_cast<float>(sm_scale * 1.4426950408889634);
  p.neox = static_cast<int>(neox);
  p.causal = static_cast<int>(causal);
  p.desc_mode = 0;
  check_launch(
      launch_attn<D, T>(p, static_cast<int>(num_q_blocks), static_cast<int>(num_q_heads),
                        reinterpret_cast<cudaStream_t>(stream)),
      "attention");
}

}  // namespace sage_sm90

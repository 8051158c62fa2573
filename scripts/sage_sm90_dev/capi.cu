// Stand-alone C ABI around the sm90 sage_attn kernels (no SGLang, no TVM-FFI, no torch headers):
// the kernel-development harness (dev.py) loads it with ctypes on the GPU machine. It also carries
// single-warpgroup GEMM tests of every wgmma operand layout the attention kernel uses, so that a
// wrong descriptor shows up in isolation.
//
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -shared -Xcompiler -fPIC \
//        -I overlay/sglang/kernels/jit/csrc/sage_attn_sm90 -o libsage_sm90_dev.so scripts/sage_sm90_dev/capi.cu
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernel.cuh"

using namespace sage_sm90;

namespace {

template <typename T>
int dispatch_attn(const AttnParams& p, int d, int nqb, int hq, cudaStream_t st) {
  if (d == 128) return launch_attn<128, T>(p, nqb, hq, st);
  if (d == 64) return launch_attn<64, T>(p, nqb, hq, st);
  return -1;
}
template <typename T>
int dispatch_pack(const PackParams& p, int d, int nkb, int hkv, cudaStream_t st) {
  if (d == 128) return launch_pack<128, T>(p, nkb, hkv, st);
  if (d == 64) return launch_pack<64, T>(p, nkb, hkv, st);
  return -1;
}

// KIND 0: int8 Q·Kᵀ-type (A 64 x 32KS int8, B 128 x 32KS int8 K-major) -> int32 64 x 128
// KIND 1: 16-bit Q·Kᵀ-type (A 64 x 16KS, B 128 x 16KS K-major) -> fp32 64 x 128
// KIND 2: P·V-type (A 64 x 16KS, B = V 16KS keys x N channels, MN-major) -> fp32 64 x N
// KIND 3 / 4: as 0 / 1 with A read from shared memory (K-major, the kernel's Q tiles)
template <int KIND, int KS, int N>
__global__ void __launch_bounds__(128) test_gemm(const void* A, const void* B, void* Dout, uint32_t swap) {
  extern __shared__ __align__(128) uint8_t sm[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int ra = 16 * warp + g, rb = ra + 8;
  uint8_t* sa = sm + 32 * 1024;  // A tile for KIND 3 / 4
  if (KIND == 3) {
    const int8_t* a = static_cast<const int8_t*>(A);
    for (int i = tid; i < 64 * 32 * KS; i += 128) {
      const int r = i / (32 * KS), byte = i % (32 * KS);
      sa[kmajor_offset(r, byte, 32 * KS)] = static_cast<uint8_t>(a[i]);
    }
  } else if (KIND == 4) {
    const uint16_t* a = static_cast<const uint16_t*>(A);
    for (int i = tid; i < 64 * 16 * KS; i += 128) {
      const int r = i / (16 * KS), kk = i % (16 * KS);
      *reinterpret_cast<uint16_t*>(sa + kmajor_offset(r, 2 * kk, 32 * KS)) = a[i];
    }
  }
  if (KIND == 0 || KIND == 3) {
    const int8_t* b = static_cast<const int8_t*>(B);
    for (int i = tid; i < 128 * 32 * KS; i += 128) {
      const int n = i / (32 * KS), byte = i % (32 * KS);
      sm[kmajor_offset(n, byte, 32 * KS)] = static_cast<uint8_t>(b[i]);
    }
  } else if (KIND == 1 || KIND == 4) {
    const uint16_t* b = static_cast<const uint16_t*>(B);
    for (int i = tid; i < 128 * 16 * KS; i += 128) {
      const int n = i / (16 * KS), kk = i % (16 * KS);
      *reinterpret_cast<uint16_t*>(sm + kmajor_offset(n, 2 * kk, 32 * KS)) = b[i];
    }
  } else {
    const uint16_t* b = static_cast<const uint16_t*>(B);
    for (int i = tid; i < 16 * KS * N; i += 128) {
      const int key = i / N, ch = i % N;
      *reinterpret_cast<uint16_t*>(sm + v_offset(key, ch, 16 * KS)) = b[i];
    }
  }
  fence_proxy_async();
  __syncthreads();
  const uint32_t base = smem_addr(sm);
  const uint32_t abase = smem_addr(sa);
  if (KIND == 3 || KIND == 4) {
    float df[64];
    uint32_t di[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) {
      df[i] = 0.f;
      di[i] = 0;
    }
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < KS; ++k) {
      if (KIND == 3) {
        wgmma_s8_n128_ss(di, smem_desc(abase + 256 * k, 128, 32 * KS * 8), desc_of(base + 256 * k, 128, 32 * KS * 8, swap & 1),
                         k > 0);
      } else {
        wgmma_bf16_n128_ss(df, smem_desc(abase + 256 * k, 128, 32 * KS * 8),
                                    desc_of(base + 256 * k, 128, 32 * KS * 8, swap & 2), k > 0);
      }
    }
    wgmma_commit();
    wgmma_wait<0>();
#pragma unroll
    for (int i = 0; i < 64; ++i) {
      const int row = (i & 2) ? rb : ra, col = 8 * (i >> 2) + 2 * t + (i & 1);
      if (KIND == 3) {
        static_cast<int32_t*>(Dout)[row * 128 + col] = static_cast<int32_t>(di[i]);
      } else {
        static_cast<float*>(Dout)[row * 128 + col] = df[i];
      }
    }
    return;
  }
  if (KIND == 0) {
    const uint8_t* a = static_cast<const uint8_t*>(A);
    uint32_t frag[KS][4];
#pragma unroll
    for (int k = 0; k < KS; ++k) {
      frag[k][0] = *reinterpret_cast<const uint32_t*>(a + ra * 32 * KS + 32 * k + 4 * t);
      frag[k][1] = *reinterpret_cast<const uint32_t*>(a + rb * 32 * KS + 32 * k + 4 * t);
      frag[k][2] = *reinterpret_cast<const uint32_t*>(a + ra * 32 * KS + 32 * k + 16 + 4 * t);
      frag[k][3] = *reinterpret_cast<const uint32_t*>(a + rb * 32 * KS + 32 * k + 16 + 4 * t);
    }
    uint32_t d[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) d[i] = 0;
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < KS; ++k) wgmma_s8_n128(d, frag[k], desc_of(base + 256 * k, 128, 32 * KS * 8, swap & 1), k > 0);
    wgmma_commit();
    wgmma_wait<0>();
    int32_t* out = static_cast<int32_t*>(Dout);
#pragma unroll
    for (int i = 0; i < 64; ++i) {
      const int row = (i & 2) ? rb : ra, col = 8 * (i >> 2) + 2 * t + (i & 1);
      out[row * 128 + col] = static_cast<int32_t>(d[i]);
    }
  } else {
    const uint16_t* a = static_cast<const uint16_t*>(A);
    uint32_t frag[KS][4];
#pragma unroll
    for (int k = 0; k < KS; ++k) {
      frag[k][0] = *reinterpret_cast<const uint32_t*>(a + ra * 16 * KS + 16 * k + 2 * t);
      frag[k][1] = *reinterpret_cast<const uint32_t*>(a + rb * 16 * KS + 16 * k + 2 * t);
      frag[k][2] = *reinterpret_cast<const uint32_t*>(a + ra * 16 * KS + 16 * k + 8 + 2 * t);
      frag[k][3] = *reinterpret_cast<const uint32_t*>(a + rb * 16 * KS + 16 * k + 8 + 2 * t);
    }
    constexpr int NN = KIND == 1 ? 128 : N;
    float d[NN / 2];
#pragma unroll
    for (int i = 0; i < NN / 2; ++i) d[i] = 0.f;
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < KS; ++k) {
      if (KIND == 1) {
        Elem<__nv_bfloat16>::mma<128, 0>(d, frag[k], desc_of(base + 256 * k, 128, 32 * KS * 8, swap & 2), k > 0);
      } else {
        Elem<__nv_bfloat16>::mma<N, 1>(d, frag[k], desc_of(base + 256 * k, 128, 16 * KS * 16, swap & 4), k > 0);
      }
    }
    wgmma_commit();
    wgmma_wait<0>();
    float* out = static_cast<float*>(Dout);
#pragma unroll
    for (int i = 0; i < NN / 2; ++i) {
      const int row = (i & 2) ? rb : ra, col = 8 * (i >> 2) + 2 * t + (i & 1);
      out[row * NN + col] = d[i];
    }
  }
}

template <int KIND, int KS, int N>
int run_test(const void* A, const void* B, void* D, uint32_t swap) {
  test_gemm<KIND, KS, N><<<1, 128, 64 * 1024>>>(A, B, D, swap);
  cudaError_t e = cudaDeviceSynchronize();
  return e == cudaSuccess ? 0 : static_cast<int>(e);
}

}  // namespace

extern "C" {

// dtype: 0 = bf16, 1 = fp16
int sage_sm90_pack(const PackParams* p, int d, int dtype, int nkb, int hkv, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  return dtype == 0 ? dispatch_pack<__nv_bfloat16>(*p, d, nkb, hkv, st) : dispatch_pack<__half>(*p, d, nkb, hkv, st);
}

int sage_sm90_attn(const AttnParams* p, int d, int dtype, int nqb, int hq, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  return dtype == 0 ? dispatch_attn<__nv_bfloat16>(*p, d, nqb, hq, st) : dispatch_attn<__half>(*p, d, nqb, hq, st);
}

int sage_sm90_sizeof_params(int which) {
  return which == 0 ? static_cast<int>(sizeof(AttnParams)) : static_cast<int>(sizeof(PackParams));
}

// which: 0 s8 KS=2, 1 s8 KS=1, 2 bf16 QK KS=4, 3 bf16 QK KS=2, 4 PV N=128, 5 PV N=64,
//        6 s8 A-from-smem KS=2, 7 bf16 A-from-smem KS=4
int sage_sm90_test_gemm(int which, const void* A, const void* B, void* D, uint32_t swap) {
  cudaFuncSetAttribute(test_gemm<0, 2, 128>, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
  cudaFuncSetAttribute(test_gemm<0, 1, 128>, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
  cudaFuncSetAttribute(test_gemm<1, 4, 128>, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
  cudaFuncSetAttribute(test_gemm<1, 2, 128>, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
  cudaFuncSetAttribute(test_gemm<2, 8, 128>, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
  cudaFuncSetAttribute(test_gemm<2, 8, 64>, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
  cudaFuncSetAttribute(test_gemm<3, 2, 128>, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
  cudaFuncSetAttribute(test_gemm<4, 4, 128>, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
  switch (which) {
    case 0: return run_test<0, 2, 128>(A, B, D, swap);
    case 1: return run_test<0, 1, 128>(A, B, D, swap);
    case 2: return run_test<1, 4, 128>(A, B, D, swap);
    case 3: return run_test<1, 2, 128>(A, B, D, swap);
    case 4: return run_test<2, 8, 128>(A, B, D, swap);
    case 5: return run_test<2, 8, 64>(A, B, D, swap);
    case 6: return run_test<3, 2, 128>(A, B, D, swap);
    case 7: return run_test<4, 4, 128>(A, B, D, swap);
    default: return -1;
  }
}

}  // extern "C"

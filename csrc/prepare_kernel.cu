// CUDA kernel of the image-preparation ops: resize (bilinear as F.interpolate, or bilinear /
// bicubic as Pillow) / crop / letterbox / pad, normalise and convert a whole batch of uint8 HWC
// images (read through a table of addresses, so a list of separately allocated images needs no
// packing copy) into one channels_last batch in one launch. The per-pixel arithmetic is
// prepare_math.h's, shared with the CPU loop. No torch headers (see prepare_kernel.h); the torch
// binding is prepare_cuda.cpp.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "prepare_kernel.h"

namespace fastmbconv {
namespace {

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

constexpr int kBlockX = 64;
constexpr int kBlockY = 4;
constexpr int64_t kMaxGridYZ = 65535;

// blockIdx.z walks images, blockIdx.y * kBlockY + threadIdx.y walks rows, x walks columns;
// every level is a grid-stride loop, so any n / out_h / out_w is covered with int64 indices.
template <typename T>
__global__ void __launch_bounds__(kBlockX * kBlockY)
prepare_images_kernel(const int64_t* __restrict__ table, int64_t n, int filter, int64_t out_h,
                      int64_t out_w, Norm norm, T* __restrict__ out) {
  const int32_t* coefs = table_coefs(table, n);
  for (int64_t i = blockIdx.z; i < n; i += gridDim.z) {
    const int64_t* m = table + i * kTableCols;
    const int64_t rh = m[kValidH], rw = m[kValidW];
    for (int64_t y = static_cast<int64_t>(blockIdx.y) * kBlockY + threadIdx.y; y < out_h;
         y += static_cast<int64_t>(gridDim.y) * kBlockY) {
      T* row = out + (i * out_h + y) * out_w * 3;
      for (int64_t x = static_cast<int64_t>(blockIdx.x) * kBlockX + threadIdx.x; x < out_w;
           x += static_cast<int64_t>(gridDim.x) * kBlockX) {
        float v[3] = {0.0f, 0.0f, 0.0f};
        if (y < rh && x < rw) window_pixel(m, coefs, filter, y, x, norm, v);
        store(row + x * 3 + 0, v[0]);
        store(row + x * 3 + 1, v[1]);
        store(row + x * 3 + 2, v[2]);
      }
    }
  }
}

template <typename T>
cudaError_t launch(const int64_t* table, int64_t n, int filter, int64_t out_h, int64_t out_w,
                   Norm norm, void* out, cudaStream_t stream) {
  if (n <= 0 || out_h <= 0 || out_w <= 0) return cudaSuccess;
  const int64_t gx = (out_w + kBlockX - 1) / kBlockX;
  const int64_t gy = (out_h + kBlockY - 1) / kBlockY;
  dim3 grid(static_cast<unsigned>(gx < 65535 ? gx : 65535),
            static_cast<unsigned>(gy < kMaxGridYZ ? gy : kMaxGridYZ),
            static_cast<unsigned>(n < kMaxGridYZ ? n : kMaxGridYZ));
  dim3 block(kBlockX, kBlockY, 1);
  prepare_images_kernel<T><<<grid, block, 0, stream>>>(table, n, filter, out_h, out_w, norm,
                                                       static_cast<T*>(out));
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_prepare_images(const int64_t* table, int64_t n, int filter, int64_t out_h,
                                  int64_t out_w, Norm norm, OutDType dtype, void* out,
                                  cudaStream_t stream) {
  switch (dtype) {
    case OutDType::kFloat32:
      return launch<float>(table, n, filter, out_h, out_w, norm, out, stream);
    case OutDType::kFloat16:
      return launch<__half>(table, n, filter, out_h, out_w, norm, out, stream);
    case OutDType::kBFloat16:
      return launch<__nv_bfloat16>(table, n, filter, out_h, out_w, norm, out, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastmbconv

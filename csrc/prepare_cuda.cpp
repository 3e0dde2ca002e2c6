// CUDA binding of fastmbconv::prepare_images, compiled only in CUDA builds (setup.py defines
// FASTMBCONV_WITH_CUDA and adds this file). The kernel itself is in prepare_kernel.cu.
#ifdef FASTMBCONV_WITH_CUDA

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "prepare_common.h"
#include "prepare_kernel.h"

namespace fastmbconv {
namespace {

at::Tensor prepare_images_cuda(const at::Tensor& data, const at::Tensor& meta, int64_t channels,
                               int64_t out_h, int64_t out_w, at::ScalarType dtype,
                               c10::ArrayRef<double> mean, c10::ArrayRef<double> std_) {
  check_args(data, meta, channels, out_h, out_w, dtype, mean, std_);
  TORCH_CHECK(data.device().is_cuda(),
              "fastmbconv::prepare_images (CUDA): data must be a CUDA tensor, got ", data.device());
  // The table is validated on the CPU, then copied to the device once.
  check_table(meta, data.numel(), channels, out_h, out_w);
  const c10::cuda::CUDAGuard guard(data.device());
  const int64_t n = meta.size(0);
  at::Tensor out = at::empty({n, 3, out_h, out_w},
                             data.options().dtype(dtype).memory_format(at::MemoryFormat::ChannelsLast));
  if (n == 0) return out;
  const at::Tensor meta_dev = meta.to(data.device(), /*non_blocking=*/false);
  OutDType od = OutDType::kFloat32;
  if (dtype == at::kHalf) od = OutDType::kFloat16;
  if (dtype == at::kBFloat16) od = OutDType::kBFloat16;
  const cudaError_t err = launch_prepare_images(
      data.const_data_ptr<uint8_t>(), meta_dev.const_data_ptr<int64_t>(), n, channels, out_h,
      out_w, make_norm(mean, std_), od, out.mutable_data_ptr(),
      c10::cuda::getCurrentCUDAStream(data.device().index()).stream());
  TORCH_CHECK(err == cudaSuccess, "fastmbconv::prepare_images: CUDA launch failed: ",
              cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmbconv, CUDA, m) { m.impl("prepare_images", &prepare_images_cuda); }

}  // namespace fastmbconv

#endif  // FASTMBCONV_WITH_CUDA

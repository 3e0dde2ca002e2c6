// CUDA binding of the image-preparation ops, compiled only in CUDA builds (setup.py defines
// FASTMBCONV_WITH_CUDA and adds this file). The kernel itself is in prepare_kernel.cu.
#ifdef FASTMBCONV_WITH_CUDA

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "prepare_common.h"
#include "prepare_kernel.h"

namespace fastmbconv {
namespace {

at::Tensor prepare_images_v2_cuda(at::TensorList images, const at::Tensor& meta, int64_t filter,
                                  int64_t out_h, int64_t out_w, at::ScalarType dtype,
                                  c10::ArrayRef<double> mean, c10::ArrayRef<double> std_) {
  // Validated and tabulated (addresses, Pillow coefficients) on the CPU, then the table goes to
  // the device in one copy and the whole batch in one launch.
  const at::Tensor table = checked_table(images, meta, filter, out_h, out_w, dtype, mean, std_);
  const c10::Device device = images[0].device();
  TORCH_CHECK(device.is_cuda(),
              "fastmbconv::prepare_images (CUDA): images must be CUDA tensors, got ", device);
  const c10::cuda::CUDAGuard guard(device);
  const int64_t n = meta.size(0);
  at::Tensor out = empty_output(images[0], n, out_h, out_w, dtype);
  if (n == 0) return out;
  // Pinned, so the upload is asynchronous (the caching host allocator keeps the block until the
  // copy is done) and the call does not wait for earlier work on the stream.
  const at::Tensor table_dev = table.pin_memory().to(device, /*non_blocking=*/true);
  OutDType od = OutDType::kFloat32;
  if (dtype == at::kHalf) od = OutDType::kFloat16;
  if (dtype == at::kBFloat16) od = OutDType::kBFloat16;
  const cudaError_t err = launch_prepare_images(
      table_dev.const_data_ptr<int64_t>(), n, static_cast<int>(filter), out_h, out_w,
      make_norm(mean, std_), od, out.mutable_data_ptr(),
      c10::cuda::getCurrentCUDAStream(device.index()).stream());
  TORCH_CHECK(err == cudaSuccess, "fastmbconv::prepare_images: CUDA launch failed: ",
              cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmbconv, CUDA, m) {
  m.impl("prepare_images", &prepare_images_v1<prepare_images_v2_cuda>);
  m.impl("prepare_images_v2", &prepare_images_v2_cuda);
}

}  // namespace fastmbconv

#endif  // FASTMBCONV_WITH_CUDA

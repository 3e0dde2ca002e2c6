// Torch-side argument checks of fastmbconv::prepare_images, shared by the CPU and CUDA bindings.
// Python (fastmbconv/prepare.py) validates first with friendlier messages; these TORCH_CHECKs
// guard direct torch.ops calls, so a bad table can never make a kernel read or write out of
// bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>

#include "prepare_math.h"

namespace fastmbconv {

inline bool mul_ok(int64_t a, int64_t b) {  // a, b >= 0
  return a == 0 || b <= std::numeric_limits<int64_t>::max() / a;
}

// Checks everything but the table's rows (which need the table on the CPU).
inline void check_args(const at::Tensor& data, const at::Tensor& meta, int64_t channels,
                       int64_t out_h, int64_t out_w, at::ScalarType dtype,
                       c10::ArrayRef<double> mean, c10::ArrayRef<double> std_) {
  TORCH_CHECK(data.scalar_type() == at::kByte,
              "fastmbconv::prepare_images: data must be uint8, got ", data.scalar_type());
  TORCH_CHECK(data.dim() == 1 && data.is_contiguous(),
              "fastmbconv::prepare_images: data must be a contiguous 1-D uint8 buffer, got shape ",
              data.sizes());
  TORCH_CHECK(meta.scalar_type() == at::kLong && meta.dim() == 2 && meta.size(1) == kMetaCols &&
                  meta.is_contiguous(),
              "fastmbconv::prepare_images: meta must be a contiguous int64 (N, ", kMetaCols,
              ") table, got ", meta.scalar_type(), " ", meta.sizes());
  TORCH_CHECK(meta.device().is_cpu(),
              "fastmbconv::prepare_images: meta must be a CPU tensor, got ", meta.device());
  TORCH_CHECK(channels == 1 || channels == 3,
              "fastmbconv::prepare_images: channels must be 1 or 3, got ", channels);
  TORCH_CHECK(out_h >= 1 && out_w >= 1 && out_h <= std::numeric_limits<int32_t>::max() &&
                  out_w <= std::numeric_limits<int32_t>::max(),
              "fastmbconv::prepare_images: output size must be in [1, 2^31), got (", out_h, ", ",
              out_w, ")");
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "fastmbconv::prepare_images: dtype must be float32, float16 or bfloat16, got ",
              dtype);
  TORCH_CHECK(mean.size() == 3 && std_.size() == 3,
              "fastmbconv::prepare_images: mean and std need 3 values each, got ", mean.size(),
              " and ", std_.size());
  for (int c = 0; c < 3; ++c) {
    TORCH_CHECK(std_[c] != 0.0, "fastmbconv::prepare_images: std must be non-zero, got ", std_);
  }
  const int64_t n = meta.size(0);
  TORCH_CHECK(mul_ok(n, 3) && mul_ok(3 * n, out_h) && mul_ok(3 * n * out_h, out_w),
              "fastmbconv::prepare_images: output of ", n, " x 3 x ", out_h, " x ", out_w,
              " elements overflows int64");
}

// Checks each row of the (CPU) table against the buffer and the output size.
inline void check_table(const at::Tensor& meta, int64_t data_numel, int64_t channels,
                        int64_t out_h, int64_t out_w) {
  const int64_t n = meta.size(0);
  const int64_t* m = meta.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t* r = m + i * kMetaCols;
    const int64_t off = r[kOffset], h = r[kHeight], w = r[kWidth];
    const int64_t rh = r[kResizedH], rw = r[kResizedW];
    TORCH_CHECK(h >= 1 && w >= 1, "fastmbconv::prepare_images: image ", i,
                " is empty (height ", h, ", width ", w, ")");
    TORCH_CHECK(rh >= 1 && rw >= 1 && rh <= out_h && rw <= out_w,
                "fastmbconv::prepare_images: image ", i, " resized to (", rh, ", ", rw,
                ") does not fit the output (", out_h, ", ", out_w, ")");
    TORCH_CHECK(off >= 0 && mul_ok(h, w) && mul_ok(h * w, channels) &&
                    h * w * channels <= data_numel && off <= data_numel - h * w * channels,
                "fastmbconv::prepare_images: image ", i, " (offset ", off, ", ", h, " x ", w,
                " x ", channels, ") lies outside the ", data_numel, "-byte buffer");
  }
}

inline Norm make_norm(c10::ArrayRef<double> mean, c10::ArrayRef<double> std_) {
  Norm nm;
  for (int c = 0; c < 3; ++c) {
    nm.mean[c] = static_cast<float>(mean[c]);
    nm.std[c] = static_cast<float>(std_[c]);
  }
  return nm;
}

}  // namespace fastmbconv

// Torch-side argument checks of fastmbconv::prepare_images, shared by the CPU and CUDA bindings.
// Python (fastmbconv/prepare.py) validates first with friendlier messages; these TORCH_CHECKs
// guard direct torch.ops calls, so a bad table can never make a loop read or write out of
// bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>

#include "prepare_math.h"

namespace fastmbconv {

// Columns of the op's int64 (N, kMetaCols) `meta` argument: which tensor of `images` holds the
// image, its element offset in that tensor, its height and width, and its resized size.
enum MetaCol : int {
  kMSource = 0,
  kMOffset = 1,
  kMHeight = 2,
  kMWidth = 3,
  kMResizedH = 4,
  kMResizedW = 5,
  kMetaCols = 6
};

inline bool mul_ok(int64_t a, int64_t b) {  // a, b >= 0
  return a == 0 || b <= std::numeric_limits<int64_t>::max() / a;
}

// Checks the arguments and turns `meta` into the loops' address table (a CPU int64
// (N, kTableCols) tensor, see prepare_math.h). Every image must lie inside its tensor.
inline at::Tensor checked_table(at::TensorList images, const at::Tensor& meta, int64_t channels,
                                int64_t out_h, int64_t out_w, at::ScalarType dtype,
                                c10::ArrayRef<double> mean, c10::ArrayRef<double> std_) {
  TORCH_CHECK(!images.empty(), "fastmbconv::prepare_images: images is an empty list");
  const c10::Device device = images[0].device();
  for (size_t k = 0; k < images.size(); ++k) {
    const at::Tensor& t = images[k];
    TORCH_CHECK(t.scalar_type() == at::kByte, "fastmbconv::prepare_images: images[", k,
                "] must be uint8, got ", t.scalar_type());
    TORCH_CHECK(t.is_contiguous(), "fastmbconv::prepare_images: images[", k,
                "] must be contiguous");
    TORCH_CHECK(t.device() == device, "fastmbconv::prepare_images: images[", k, "] is on ",
                t.device(), " but images[0] is on ", device);
  }
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

  at::Tensor table = at::empty({n, kTableCols}, meta.options());
  int64_t* tab = table.mutable_data_ptr<int64_t>();
  const int64_t* m = meta.const_data_ptr<int64_t>();
  const int64_t num_sources = static_cast<int64_t>(images.size());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t* r = m + i * kMetaCols;
    const int64_t src = r[kMSource], off = r[kMOffset], h = r[kMHeight], w = r[kMWidth];
    const int64_t rh = r[kMResizedH], rw = r[kMResizedW];
    TORCH_CHECK(src >= 0 && src < num_sources, "fastmbconv::prepare_images: image ", i,
                " names images[", src, "] but there are ", num_sources, " tensors");
    TORCH_CHECK(h >= 1 && w >= 1, "fastmbconv::prepare_images: image ", i,
                " is empty (height ", h, ", width ", w, ")");
    TORCH_CHECK(rh >= 1 && rw >= 1 && rh <= out_h && rw <= out_w,
                "fastmbconv::prepare_images: image ", i, " resized to (", rh, ", ", rw,
                ") does not fit the output (", out_h, ", ", out_w, ")");
    const int64_t numel = images[src].numel();
    TORCH_CHECK(off >= 0 && mul_ok(h, w) && mul_ok(h * w, channels) &&
                    h * w * channels <= numel && off <= numel - h * w * channels,
                "fastmbconv::prepare_images: image ", i, " (offset ", off, ", ", h, " x ", w,
                " x ", channels, ") lies outside images[", src, "] (", numel, " bytes)");
    int64_t* t = tab + i * kTableCols;
    t[kAddr] = static_cast<int64_t>(
        reinterpret_cast<uintptr_t>(images[src].const_data_ptr<uint8_t>() + off));
    t[kHeight] = h;
    t[kWidth] = w;
    t[kResizedH] = rh;
    t[kResizedW] = rw;
  }
  return table;
}

inline at::Tensor empty_output(const at::Tensor& like, int64_t n, int64_t out_h, int64_t out_w,
                               at::ScalarType dtype) {
  return at::empty({n, 3, out_h, out_w},
                   like.options().dtype(dtype).memory_format(at::MemoryFormat::ChannelsLast));
}

inline Norm make_norm(c10::ArrayRef<double> mean, c10::ArrayRef<double> std_) {
  Norm nm;
  for (int c = 0; c < 3; ++c) {
    nm.scale[c] = static_cast<float>(1.0 / (255.0 * std_[c]));
    nm.shift[c] = static_cast<float>(-mean[c] / std_[c]);
  }
  return nm;
}

}  // namespace fastmbconv

// fastmbconv._C: schema of fastmbconv::prepare_images and its CPU implementation (at::parallel_for
// over output rows). The CUDA implementation is registered by prepare_cuda.cpp in CUDA builds.
//
//   prepare_images(Tensor[] images, Tensor meta, int channels, int out_h, int out_w,
//                  ScalarType dtype, float[] mean, float[] std) -> Tensor
//
// images: contiguous uint8 tensors on one device, read as flat byte buffers (an NHWC batch, a
// list of HWC images, or one packed buffer); meta: CPU int64 (N, 6) table of
// (source tensor, element offset, h, w, rh, rw), one row per image (see prepare_common.h).
// Returns an (N, 3, out_h, out_w) channels_last tensor of `dtype` on the images' device:
// image i resized (bilinear, align_corners=False) from (h, w) to (rh, rw) into the top-left
// corner, normalised as (v / 255 - mean) / std, and zero elsewhere. No image is copied.
#include <Python.h>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "prepare_common.h"

namespace fastmbconv {
namespace {

template <typename T>
void prepare_cpu_impl(const int64_t* table, int64_t n, int64_t channels, int64_t out_h,
                      int64_t out_w, const Norm& nm, c10::ArrayRef<double> mean,
                      c10::ArrayRef<double> std_, T* out) {
  const int64_t rows = n * out_h;
  const int64_t grain = std::max<int64_t>(1, 16384 / out_w);
  // Unresized images (pad mode) need no interpolation: a table of the 256 normalised values per
  // channel, computed exactly as the reference does, (v / 255 - mean) / std in fp32.
  float lut[3][256];
  for (int c = 0; c < 3; ++c) {
    const float m = static_cast<float>(mean[c]), sd = static_cast<float>(std_[c]);
    for (int v = 0; v < 256; ++v) lut[c][v] = (static_cast<float>(v) / 255.0f - m) / sd;
  }
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<Tap> xtaps;  // column taps of image `cached`, shared by all its rows
    int64_t cached = -1;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r / out_h;
      const int64_t y = r - i * out_h;
      const int64_t* m = table + i * kTableCols;
      const int64_t h = m[kHeight], w = m[kWidth], rh = m[kResizedH], rw = m[kResizedW];
      T* row = out + r * out_w * 3;
      if (y >= rh) {
        std::fill(row, row + out_w * 3, T(0.0f));
        continue;
      }
      const uint8_t* img = table_image(m);
      if (h == rh && w == rw) {
        const uint8_t* src = img + y * w * channels;
        for (int64_t x = 0; x < rw; ++x) {
          const uint8_t* p = src + x * channels;
          row[x * 3 + 0] = T(lut[0][p[0]]);
          row[x * 3 + 1] = T(lut[1][p[channels == 1 ? 0 : 1]]);
          row[x * 3 + 2] = T(lut[2][p[channels == 1 ? 0 : 2]]);
        }
        std::fill(row + rw * 3, row + out_w * 3, T(0.0f));
        continue;
      }
      if (cached != i) {
        xtaps.resize(rw);
        for (int64_t x = 0; x < rw; ++x) xtaps[x] = source_tap(x, w, rw);
        cached = i;
      }
      const Tap ty = source_tap(y, h, rh);
      for (int64_t x = 0; x < rw; ++x) {
        float v[3];
        interpolate_pixel(img, w, channels, ty, xtaps[x], nm, v);
        row[x * 3 + 0] = T(v[0]);
        row[x * 3 + 1] = T(v[1]);
        row[x * 3 + 2] = T(v[2]);
      }
      std::fill(row + rw * 3, row + out_w * 3, T(0.0f));
    }
  });
}

at::Tensor prepare_images_cpu(at::TensorList images, const at::Tensor& meta, int64_t channels,
                              int64_t out_h, int64_t out_w, at::ScalarType dtype,
                              c10::ArrayRef<double> mean, c10::ArrayRef<double> std_) {
  const at::Tensor table = checked_table(images, meta, channels, out_h, out_w, dtype, mean, std_);
  TORCH_CHECK(images[0].device().is_cpu(),
              "fastmbconv::prepare_images (CPU): images must be CPU tensors, got ",
              images[0].device());
  const int64_t n = meta.size(0);
  at::Tensor out = empty_output(images[0], n, out_h, out_w, dtype);
  if (n == 0) return out;
  const Norm nm = make_norm(mean, std_);
  const int64_t* tab = table.const_data_ptr<int64_t>();
  switch (dtype) {
    case at::kFloat:
      prepare_cpu_impl(tab, n, channels, out_h, out_w, nm, mean, std_, out.mutable_data_ptr<float>());
      break;
    case at::kHalf:
      prepare_cpu_impl(tab, n, channels, out_h, out_w, nm, mean, std_, out.mutable_data_ptr<c10::Half>());
      break;
    case at::kBFloat16:
      prepare_cpu_impl(tab, n, channels, out_h, out_w, nm, mean, std_, out.mutable_data_ptr<c10::BFloat16>());
      break;
    default:
      TORCH_CHECK(false, "unreachable");
  }
  return out;
}

}  // namespace

// FRAGMENT, not TORCH_LIBRARY: the Triton kernels register their own ops in the same
// "fastmbconv" namespace from Python, and a namespace can have only one defining library.
TORCH_LIBRARY_FRAGMENT(fastmbconv, m) {
  // The fake (meta) implementation is Python's (fastmbconv/_ext.py, registered on load and on
  // import of that module); torch names the module in its error if a fake tensor reaches the
  // op before, e.g. after a bare `import fastmbconv._C`.
  m.set_python_module("fastmbconv._ext");
  m.def(
      "prepare_images(Tensor[] images, Tensor meta, int channels, int out_h, int out_w, "
      "ScalarType dtype, float[] mean, float[] std) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastmbconv, CPU, m) { m.impl("prepare_images", &prepare_images_cpu); }

}  // namespace fastmbconv

// A plain Python module, so `import fastmbconv._C` loads the library (and runs the
// registrations above); the ops are reached through torch.ops.fastmbconv.
static PyModuleDef fastmbconv_c_module = {PyModuleDef_HEAD_INIT, "fastmbconv._C",
                                          "fastmbconv's compiled ops (torch.ops.fastmbconv)", -1,
                                          nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&fastmbconv_c_module); }

// The CUDA kernel's per-pixel path (window_pixel in csrc/prepare_math.h, over the same checked
// table) run on the host, fp32, as torch.ops.fastmbconv_pixelwise.prepare: built by
// tests/test_prepare_pixelwise.py, which compares it bit for bit with the CPU op, so the GPU's
// arithmetic is checked on a machine without one. The loop is the kernel's, without the grid;
// built with -ffp-contract=off as the kernel is with --fmad=false.
#include <torch/library.h>

#include "prepare_common.h"

namespace fastmbconv {
namespace {

at::Tensor prepare_pixelwise(at::TensorList images, const at::Tensor& meta, int64_t filter,
                             int64_t out_h, int64_t out_w, c10::ArrayRef<double> mean,
                             c10::ArrayRef<double> std_) {
  const at::Tensor table = checked_table(images, meta, filter, out_h, out_w, at::kFloat, mean, std_);
  const int64_t n = meta.size(0);
  at::Tensor out = empty_output(images[0], n, out_h, out_w, at::kFloat);
  const int64_t* tab = table.const_data_ptr<int64_t>();
  const int32_t* coefs = table_coefs(tab, n);
  const Norm nm = make_norm(mean, std_);
  float* o = out.mutable_data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t* m = tab + i * kTableCols;
    for (int64_t y = 0; y < out_h; ++y) {
      float* row = o + (i * out_h + y) * out_w * 3;
      for (int64_t x = 0; x < out_w; ++x) {
        float v[3] = {0.0f, 0.0f, 0.0f};
        if (y < m[kValidH] && x < m[kValidW]) window_pixel(m, coefs, static_cast<int>(filter), y, x, nm, v);
        for (int k = 0; k < 3; ++k) row[x * 3 + k] = v[k];
      }
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(fastmbconv_pixelwise, m) {
  m.def("prepare(Tensor[] images, Tensor meta, int filter, int out_h, int out_w, float[] mean, "
        "float[] std) -> Tensor", &prepare_pixelwise);
}

}  // namespace fastmbconv

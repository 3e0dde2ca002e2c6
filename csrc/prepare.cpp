// fastmbconv._C: schemas of the image-preparation ops and their CPU implementation
// (at::parallel_for over output rows). The CUDA implementation is registered by
// prepare_cuda.cpp in CUDA builds.
//
//   prepare_images_v2(Tensor[] images, Tensor meta, int filter, int out_h, int out_w,
//                     ScalarType dtype, float[] mean, float[] std) -> Tensor
//
// images: contiguous uint8 tensors on one device, read as flat byte buffers (an NHWC batch, a
// list of HWC images, or one packed buffer); meta: CPU int64 (N, 11) table of (source tensor,
// element offset, h, w, channels, resized h, resized w, top, left, window h, window w), one row
// per image (see prepare_common.h); filter: 0 bilinear as F.interpolate (fp32), 1 / 2 bilinear /
// bicubic as Pillow's Image.resize (see prepare_math.h). Returns an (N, 3, out_h, out_w)
// channels_last tensor of `dtype` on the images' device: image i resized to (resized h, w), its
// window placed in the top-left corner and normalised as (v / 255 - mean) / std, zero elsewhere.
// No image is copied.
//
//   prepare_images(Tensor[] images, Tensor meta, int channels, int out_h, int out_w,
//                  ScalarType dtype, float[] mean, float[] std) -> Tensor
//
// The first version: meta rows (source, offset, h, w, rh, rw), every image with `channels`
// channels, resized (filter 0) to (rh, rw) and kept whole.
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

// What one thread keeps while it walks consecutive rows of one image: the column taps (filter
// 0), or a ring of horizontally resampled rows (Pillow filters; consecutive output rows share
// most source rows, and a row's taps are consecutive, so a ring of K_y slots holds them all),
// and scratch for the Pillow sums.
struct RowCache {
  int64_t image = -1;
  std::vector<Tap> xtaps;
  int64_t slots = 0;
  int64_t pitch = 0;  // window width x channels
  std::vector<int64_t> tag;
  std::vector<uint8_t> rows;
  std::vector<uint8_t> cols;  // one row after the vertical pass, when that runs first
  std::vector<int32_t> acc;
};

// Horizontal pass of one row over the window's columns, C channels per pixel; `src` holds
// source columns from `base` on. The sums are pil_pixel's (integers: the loop order does not
// change them), all channels per tap.
template <int C>
void pil_hpass(const uint8_t* __restrict__ src, int64_t base, const int32_t* entries,
               int64_t ksize, int64_t rw, uint8_t* __restrict__ d) {
  for (int64_t x = 0; x < rw; ++x) {
    const int32_t* xe = entries + x * (ksize + 2);
    const uint8_t* p = src + (xe[0] - base) * C;
    int32_t acc[C];
    for (int ch = 0; ch < C; ++ch) acc[ch] = pil_acc0();
    for (int32_t t = 0; t < xe[1]; ++t) {
      for (int ch = 0; ch < C; ++ch) acc[ch] += static_cast<int32_t>(p[t * C + ch]) * xe[2 + t];
    }
    for (int ch = 0; ch < C; ++ch) d[x * C + ch] = static_cast<uint8_t>(pil_clip8(acc[ch]));
  }
}

void pil_hpass(const uint8_t* src, int64_t base, const int64_t* m, const int32_t* coefs,
               uint8_t* d) {
  if (m[kChannels] == 3) {
    pil_hpass<3>(src, base, coefs + m[kXCoef], m[kXTaps], m[kValidW], d);
  } else {
    pil_hpass<1>(src, base, coefs + m[kXCoef], m[kXTaps], m[kValidW], d);
  }
}

// Vertical pass over n bytes per row: d[j] = clip8(sum over the taps of k_t * row(first + t)[j]).
template <typename RowFn>
void pil_vpass(RowFn row, const int32_t* ye, int64_t n, int32_t* __restrict__ acc,
               uint8_t* __restrict__ d) {
  std::fill(acc, acc + n, pil_acc0());
  for (int32_t t = 0; t < ye[1]; ++t) {
    const uint8_t* __restrict__ src = row(ye[0] + t);
    const int32_t k = ye[2 + t];
    for (int64_t j = 0; j < n; ++j) acc[j] += static_cast<int32_t>(src[j]) * k;
  }
  for (int64_t j = 0; j < n; ++j) d[j] = static_cast<uint8_t>(pil_clip8(acc[j]));
}

// Source row `sr` of image `m` after the horizontal pass, from the ring or computed into it.
const uint8_t* pil_hrow(RowCache& rc, const int64_t* m, const int32_t* coefs, int64_t sr) {
  const int64_t s = sr % rc.slots;
  uint8_t* d = rc.rows.data() + s * rc.pitch;
  if (rc.tag[s] == sr) return d;
  const int64_t c = m[kChannels];
  const uint8_t* src = table_image(m) + sr * m[kWidth] * c;
  if (m[kXTaps] == 0) {
    std::copy(src + m[kLeft] * c, src + (m[kLeft] + m[kValidW]) * c, d);
  } else {
    pil_hpass(src, 0, m, coefs, d);
  }
  rc.tag[s] = sr;
  return d;
}

// Output row y of image `m` (Pillow filters) as uint8 values, `c` per pixel, into `vals`.
void pil_out_row(RowCache& rc, const int64_t* m, const int32_t* coefs, int64_t y, uint8_t* vals) {
  const int64_t c = m[kChannels], n = m[kValidW] * c, yk = m[kYTaps], xk = m[kXTaps];
  if (yk == 0) {
    const uint8_t* d = pil_hrow(rc, m, coefs, m[kTop] + y);
    std::copy(d, d + n, vals);
    return;
  }
  const int32_t* ye = coefs + m[kYCoef] + y * (yk + 2);
  if (xk != 0 && m[kVerticalFirst]) {
    // The source columns the row's horizontal taps reach (both ends grow with x), resampled
    // vertically, then horizontally.
    const int32_t* last = coefs + m[kXCoef] + (m[kValidW] - 1) * (xk + 2);
    const int64_t lo = coefs[m[kXCoef]], span = (last[0] + last[1] - lo) * c;
    const uint8_t* img = table_image(m) + lo * c;
    const int64_t pitch = m[kWidth] * c;
    rc.cols.resize(span);
    rc.acc.resize(span);
    pil_vpass([&](int64_t r) { return img + r * pitch; }, ye, span, rc.acc.data(), rc.cols.data());
    pil_hpass(rc.cols.data(), lo, m, coefs, vals);
    return;
  }
  rc.acc.resize(n);  // taps <= slots: fetching one row never evicts another
  pil_vpass([&](int64_t r) { return pil_hrow(rc, m, coefs, r); }, ye, n, rc.acc.data(), vals);
}

template <typename T>
void prepare_cpu_impl(const int64_t* table, int64_t n, int64_t filter, int64_t out_h,
                      int64_t out_w, const Norm& nm, T* out) {
  const int32_t* coefs = table_coefs(table, n);
  const int64_t rows = n * out_h;
  const int64_t grain = std::max<int64_t>(1, 16384 / out_w);
  float lut[3][256];  // integer values normalised exactly as the reference does
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) lut[c][v] = normalise_exact(v, nm, c);
  }
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    RowCache rc;
    std::vector<uint8_t> vals;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r / out_h;
      const int64_t y = r - i * out_h;
      const int64_t* m = table + i * kTableCols;
      const int64_t h = m[kHeight], w = m[kWidth], c = m[kChannels];
      const int64_t sh = m[kScaledH], sw = m[kScaledW], top = m[kTop], left = m[kLeft];
      const int64_t rh = m[kValidH], rw = m[kValidW];
      T* row = out + r * out_w * 3;
      if (y >= rh) {
        std::fill(row, row + out_w * 3, T(0.0f));
        continue;
      }
      const uint8_t* img = table_image(m);
      const int64_t g = c == 1 ? 0 : 1;  // grayscale reads channel 0 three times
      if (h == sh && w == sw) {  // no resize: the window as it is
        const uint8_t* src = img + ((top + y) * w + left) * c;
        for (int64_t x = 0; x < rw; ++x) {
          const uint8_t* p = src + x * c;
          for (int k = 0; k < 3; ++k) row[x * 3 + k] = T(lut[k][p[g * k]]);
        }
      } else if (filter == kTorchBilinear) {
        if (rc.image != i) {
          rc.xtaps.resize(rw);
          for (int64_t x = 0; x < rw; ++x) rc.xtaps[x] = source_tap(left + x, w, sw);
          rc.image = i;
        }
        const Tap ty = source_tap(top + y, h, sh);
        for (int64_t x = 0; x < rw; ++x) {
          float v[3];
          interpolate_pixel(img, w, c, ty, rc.xtaps[x], nm, v);
          for (int k = 0; k < 3; ++k) row[x * 3 + k] = T(v[k]);
        }
      } else {
        if (rc.image != i) {
          rc.slots = m[kYTaps] ? m[kYTaps] : 1;
          rc.pitch = rw * c;
          rc.tag.assign(rc.slots, -1);
          rc.rows.resize(rc.slots * rc.pitch);
          rc.image = i;
        }
        vals.resize(rw * c);
        pil_out_row(rc, m, coefs, y, vals.data());
        for (int64_t x = 0; x < rw; ++x) {
          const uint8_t* p = vals.data() + x * c;
          for (int k = 0; k < 3; ++k) row[x * 3 + k] = T(lut[k][p[g * k]]);
        }
      }
      std::fill(row + rw * 3, row + out_w * 3, T(0.0f));
    }
  });
}

at::Tensor prepare_images_v2_cpu(at::TensorList images, const at::Tensor& meta, int64_t filter,
                                 int64_t out_h, int64_t out_w, at::ScalarType dtype,
                                 c10::ArrayRef<double> mean, c10::ArrayRef<double> std_) {
  const at::Tensor table = checked_table(images, meta, filter, out_h, out_w, dtype, mean, std_);
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
      prepare_cpu_impl(tab, n, filter, out_h, out_w, nm, out.mutable_data_ptr<float>());
      break;
    case at::kHalf:
      prepare_cpu_impl(tab, n, filter, out_h, out_w, nm, out.mutable_data_ptr<c10::Half>());
      break;
    case at::kBFloat16:
      prepare_cpu_impl(tab, n, filter, out_h, out_w, nm, out.mutable_data_ptr<c10::BFloat16>());
      break;
    default:
      TORCH_CHECK(false, "unreachable");
  }
  return out;
}

}  // namespace

// FRAGMENT, not TORCH_LIBRARY: the Triton kernels register their own ops in the same
// "fastmbconv" namespace from Python, and a namespace can have only one defining library.
// The fake (meta) implementations are Python's, registered when the extension loads: v1's in
// fastmbconv/_ext.py, v2's in fastmbconv/prepare.py. torch names that module in its error if a
// fake tensor reaches an op before, e.g. after a bare `import fastmbconv._C`.
TORCH_LIBRARY_FRAGMENT(fastmbconv, m) {
  m.set_python_module("fastmbconv._ext");
  m.def(
      "prepare_images(Tensor[] images, Tensor meta, int channels, int out_h, int out_w, "
      "ScalarType dtype, float[] mean, float[] std) -> Tensor");
}

TORCH_LIBRARY_FRAGMENT(fastmbconv, m) {
  m.set_python_module("fastmbconv.prepare");
  m.def(
      "prepare_images_v2(Tensor[] images, Tensor meta, int filter, int out_h, int out_w, "
      "ScalarType dtype, float[] mean, float[] std) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastmbconv, CPU, m) {
  m.impl("prepare_images", &prepare_images_v1<prepare_images_v2_cpu>);
  m.impl("prepare_images_v2", &prepare_images_v2_cpu);
}

}  // namespace fastmbconv

// A plain Python module, so `import fastmbconv._C` loads the library (and runs the
// registrations above); the ops are reached through torch.ops.fastmbconv.
static PyModuleDef fastmbconv_c_module = {PyModuleDef_HEAD_INIT, "fastmbconv._C",
                                          "fastmbconv's compiled ops (torch.ops.fastmbconv)", -1,
                                          nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&fastmbconv_c_module); }

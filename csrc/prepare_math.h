// Per-pixel arithmetic of fastmbconv::prepare_images, shared by the C++ (CPU) loop and the CUDA
// kernel so both compute exactly the same thing. No torch headers: the .cu includes this file.
//
// The bilinear taps follow ATen's upsample_bilinear2d with align_corners=False and no explicit
// scale factor (what F.interpolate(size=..., mode="bilinear") calls): scale = in / out in fp32,
// src = scale * (dst + 0.5) - 0.5 clamped at 0, i0 = min(floor(src), in - 1),
// i1 = i0 + (i0 < in - 1), lambda1 = src - i0, and an exact copy when in == out.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FMB_HD __host__ __device__ __forceinline__
#else
#define FMB_HD inline
#endif

namespace fastmbconv {

// Columns of the int64 (N, kTableCols) image table the loops read: the address of the image's
// first byte (HWC, channels interleaved), its height and width, and the size (rh, rw) it is
// resized to. The image is written to the top-left (rh, rw) corner of its output slot; the rest
// of the slot is zero.
enum TableCol : int { kAddr = 0, kHeight = 1, kWidth = 2, kResizedH = 3, kResizedW = 4, kTableCols = 5 };

FMB_HD const uint8_t* table_image(const int64_t* row) {
  return reinterpret_cast<const uint8_t*>(static_cast<uintptr_t>(row[kAddr]));
}

// Normalisation (v / 255 - mean[c]) / std[c], folded into out = v * scale[c] + shift[c] with
// scale = 1 / (255 std) and shift = -mean / std rounded to fp32 from double: within a few fp32
// ulps (~3e-7 absolute) of the three-step formula, without divisions.
struct Norm {
  float scale[3];
  float shift[3];
};

struct Tap {
  int64_t i0;
  int64_t i1;
  float l0;
  float l1;
};

FMB_HD Tap source_tap(int64_t dst, int64_t in_size, int64_t out_size) {
  Tap t;
  if (in_size == out_size) {
    t.i0 = dst;
    t.i1 = dst;
    t.l0 = 1.0f;
    t.l1 = 0.0f;
    return t;
  }
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  float real = scale * (static_cast<float>(dst) + 0.5f) - 0.5f;
  if (!(real > 0.0f)) real = 0.0f;  // also maps a NaN (impossible here) to 0
  int64_t i0 = static_cast<int64_t>(real);  // real >= 0: truncation is floor
  if (i0 > in_size - 1) i0 = in_size - 1;
  float l1 = real - static_cast<float>(i0);
  l1 = l1 < 0.0f ? 0.0f : (l1 > 1.0f ? 1.0f : l1);
  t.i0 = i0;
  t.i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  t.l1 = l1;
  t.l0 = 1.0f - l1;
  return t;
}

// The three normalised output channels of one in-image output pixel, from its row and column
// taps. img: the image's first byte (HWC, `channels` = 1 or 3 interleaved; 1 is broadcast to RGB).
FMB_HD void interpolate_pixel(const uint8_t* img, int64_t w, int64_t channels, const Tap& ty,
                              const Tap& tx, const Norm& nm, float out[3]) {
  const int64_t row0 = ty.i0 * w * channels;
  const int64_t row1 = ty.i1 * w * channels;
  const int64_t col0 = tx.i0 * channels;
  const int64_t col1 = tx.i1 * channels;
#pragma unroll
  for (int c = 0; c < 3; ++c) {
    const int64_t cc = channels == 1 ? 0 : c;
    const float p00 = static_cast<float>(img[row0 + col0 + cc]);
    const float p01 = static_cast<float>(img[row0 + col1 + cc]);
    const float p10 = static_cast<float>(img[row1 + col0 + cc]);
    const float p11 = static_cast<float>(img[row1 + col1 + cc]);
    const float v = ty.l0 * (tx.l0 * p00 + tx.l1 * p01) + ty.l1 * (tx.l0 * p10 + tx.l1 * p11);
    out[c] = v * nm.scale[c] + nm.shift[c];
  }
}

// Pixel (y, x) of one image's output slot, for a row y < rh with taps ty: zero past rw.
FMB_HD void prepare_pixel(const uint8_t* img, int64_t w, int64_t channels, int64_t rw,
                          const Tap& ty, int64_t x, const Norm& nm, float out[3]) {
  if (x >= rw) {
    out[0] = out[1] = out[2] = 0.0f;
    return;
  }
  interpolate_pixel(img, w, channels, ty, source_tap(x, w, rw), nm, out);
}

}  // namespace fastmbconv

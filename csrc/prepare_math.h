// Per-pixel arithmetic of fastmbconv's image-preparation ops, shared by the C++ (CPU) loop and
// the CUDA kernel so both compute exactly the same thing. No torch headers: the .cu includes it.
//
// Each image i of a batch is resized from (h, w) to (sh, sw) with one of three filters; the
// window of (rh, rw) pixels starting at (top, left) of the resized image is written to the
// top-left corner of output slot i, normalised; the rest of the slot is zero.
//
// kTorchBilinear follows ATen's upsample_bilinear2d with align_corners=False and no explicit
// scale factor (what F.interpolate(size=..., mode="bilinear") calls), in fp32: scale = in / out,
// src = scale * (dst + 0.5) - 0.5 (one fused multiply-add) clamped at 0, i0 = min(floor(src), in - 1),
// i1 = i0 + (i0 < in - 1), lambda1 = src - i0, and an exact copy when in == out.
//
// kPilBilinear / kPilBicubic follow Pillow's Image.resize (libImaging/Resample.c), which is what
// torchvision's and timm's PIL transforms run: two separable passes, each skipped when its size
// is unchanged; the filter's support widens by the downscale factor (antialiasing);
// coefficients are computed in double, normalised to sum 1 and rounded to fixed point with 22
// fractional bits; each pass rounds half up and clamps to uint8. The horizontal pass runs first
// unless the height shrinks by more than twice what the width shrinks (Pillow >= 13; earlier
// Pillow always runs it first, which changes some values by one). Done the same way here,
// results are bit-exact to Pillow 13's for 8-bit images.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FMB_HD __host__ __device__ __forceinline__
#else
#define FMB_HD inline
#endif

namespace fastmbconv {

// Columns of the int64 (N, kTableCols) image table the loops read: the address of the image's first
// byte (HWC, channels interleaved), its height, width and channel count (1 or 3), the resized size,
// the window's top-left corner and size, and, for the Pillow filters, where each axis's coefficient
// entries start in the coefficient area and their tap count K (0: the axis is not resized), and
// whether the vertical pass runs first. The coefficient area is int32 and follows the N table rows
// in the same buffer; the entry of window index o is [first source index, taps, k_0 .. k_{K-1}] at
// offset + o * (K + 2).
enum TableCol : int {
  kAddr = 0,
  kHeight,
  kWidth,
  kChannels,
  kScaledH,
  kScaledW,
  kTop,
  kLeft,
  kValidH,
  kValidW,
  kYCoef,
  kYTaps,
  kXCoef,
  kXTaps,
  kVerticalFirst,
  kTableCols
};

enum Filter : int { kTorchBilinear = 0, kPilBilinear = 1, kPilBicubic = 2 };

constexpr int kPilBits = 22;  // Pillow's PRECISION_BITS for 8-bit images (32 - 8 - 2)

FMB_HD const uint8_t* table_image(const int64_t* row) {
  return reinterpret_cast<const uint8_t*>(static_cast<uintptr_t>(row[kAddr]));
}

FMB_HD const int32_t* table_coefs(const int64_t* table, int64_t n) {
  return reinterpret_cast<const int32_t*>(table + n * kTableCols);
}

// Normalisation (v / 255 - mean[c]) / std[c]. Interpolated fp32 values use the folded form
// v * scale[c] + shift[c] (scale = 1 / (255 std), shift = -mean / std, rounded to fp32 from
// double: within a few fp32 ulps, ~3e-7 absolute, of the three-step formula). Integer values
// (unresized or Pillow-resampled images) use the three-step formula in fp32, bit-identical to
// torchvision's ToTensor + Normalize.
struct Norm {
  float scale[3];
  float shift[3];
  float mean[3];
  float std[3];
};

FMB_HD float normalise_exact(int32_t v, const Norm& nm, int c) {
  return (static_cast<float>(v) / 255.0f - nm.mean[c]) / nm.std[c];
}

// ------------------------------------------------------------------- F.interpolate bilinear

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
  // One rounding, as ATen's FMA builds compute it (x86 AVX2/AVX-512 kernels, nvcc's default
  // contraction); its DEFAULT CPU kernels round twice. Two roundings move lambda by up to ~1e-5.
  float real = fmaf(scale, static_cast<float>(dst) + 0.5f, -0.5f);
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

// The three normalised output channels of one in-window output pixel, from its row and column
// taps. img: the image's first byte (HWC, `channels` = 1 or 3 interleaved; 1 is broadcast).
FMB_HD void interpolate_pixel(const uint8_t* img, int64_t w, int64_t channels, const Tap& ty,
                              const Tap& tx, const Norm& nm, float out[3]) {
  const int64_t row0 = ty.i0 * w * channels;
  const int64_t row1 = ty.i1 * w * channels;
  const int64_t col0 = tx.i0 * channels;
  const int64_t col1 = tx.i1 * channels;
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

// ------------------------------------------------------------------- Pillow resampling

// Pillow's accumulator starts at half a unit, so clip8 rounds half up.
FMB_HD int32_t pil_acc0() { return 1 << (kPilBits - 1); }

// Pillow's clip8: the accumulator shifted down and clamped to [0, 255].
FMB_HD int32_t pil_clip8(int32_t acc) {
  const int32_t v = acc >> kPilBits;  // arithmetic shift: floor
  return v < 0 ? 0 : (v > 255 ? 255 : v);
}

// One pass's value at one position: sum over `taps` samples `stride` bytes apart.
FMB_HD int32_t pil_sum(const uint8_t* p, int64_t stride, const int32_t* k, int32_t taps) {
  int32_t acc = pil_acc0();
  for (int32_t t = 0; t < taps; ++t) acc += static_cast<int32_t>(p[t * stride]) * k[t];
  return pil_clip8(acc);
}

// Pillow 13's pass order (ImagingResampleInner): vertical first when the height shrinks by more
// than twice as many pixels as the width does.
FMB_HD bool pil_vertical_first(int64_t h, int64_t w, int64_t sh, int64_t sw) {
  return h - sh > 0 && h - sh > (w - sw) * 2;
}

// Channel c of the horizontal pass at one source row: xe is the column's coefficient entry, or
// null when the width is unchanged (then source column sx is read as is).
FMB_HD int32_t pil_row_value(const uint8_t* row, int64_t channels, int64_t c, const int32_t* xe,
                             int64_t sx) {
  if (xe == nullptr) return row[sx * channels + c];
  return pil_sum(row + static_cast<int64_t>(xe[0]) * channels + c, channels, xe + 2, xe[1]);
}

// Channel c of the vertical pass at one source column: ye is the row's coefficient entry, or
// null when the height is unchanged (then source row sy is read as is).
FMB_HD int32_t pil_col_value(const uint8_t* col, int64_t pitch, const int32_t* ye, int64_t sy) {
  if (ye == nullptr) return col[sy * pitch];
  return pil_sum(col + static_cast<int64_t>(ye[0]) * pitch, pitch, ye + 2, ye[1]);
}

// The uint8 values of one output pixel (both passes, in Pillow's order), channel by channel: ye
// / xe are the row's and column's coefficient entries, or null for an unresized axis (then
// source row sy / column sx). The CUDA kernel computes every pixel this way; the CPU loop keeps
// each first-pass row and applies the same sums.
FMB_HD void pil_pixel(const uint8_t* img, int64_t w, int64_t channels, const int32_t* ye,
                      int64_t sy, const int32_t* xe, int64_t sx, bool vertical_first,
                      int32_t out[3]) {
  const int64_t pitch = w * channels;
  for (int64_t c = 0; c < channels; ++c) {
    int32_t acc = pil_acc0();
    if (ye != nullptr && xe != nullptr && vertical_first) {
      const uint8_t* col = img + (static_cast<int64_t>(xe[0]) * channels + c);
      for (int32_t t = 0; t < xe[1]; ++t) {
        acc += pil_col_value(col + t * channels, pitch, ye, sy) * xe[2 + t];
      }
      out[c] = pil_clip8(acc);
    } else if (ye != nullptr) {
      for (int32_t t = 0; t < ye[1]; ++t) {
        acc += pil_row_value(img + (ye[0] + t) * pitch, channels, c, xe, sx) * ye[2 + t];
      }
      out[c] = pil_clip8(acc);
    } else {
      out[c] = pil_row_value(img + sy * pitch, channels, c, xe, sx);
    }
  }
  if (channels == 1) out[1] = out[2] = out[0];
}

// Pixel (y, x) of one image's window, y < rh and x < rw: its three normalised channels, from
// its table row m. The CUDA kernel's whole per-pixel path (the CPU loop reuses rows instead);
// tests/csrc runs it on the host against the CPU op.
FMB_HD void window_pixel(const int64_t* m, const int32_t* coefs, int filter, int64_t y, int64_t x,
                         const Norm& nm, float v[3]) {
  const uint8_t* img = table_image(m);
  const int64_t h = m[kHeight], w = m[kWidth], c = m[kChannels];
  const int64_t sh = m[kScaledH], sw = m[kScaledW];
  const int64_t sy = m[kTop] + y, sx = m[kLeft] + x;
  if (h == sh && w == sw) {  // no resize: as the CPU loop, the exact three-step normalisation
    const uint8_t* p = img + (sy * w + sx) * c;
    for (int k = 0; k < 3; ++k) v[k] = normalise_exact(p[c == 1 ? 0 : k], nm, k);
    return;
  }
  if (filter == kTorchBilinear) {
    interpolate_pixel(img, w, c, source_tap(sy, h, sh), source_tap(sx, w, sw), nm, v);
    return;
  }
  const int64_t yk = m[kYTaps], xk = m[kXTaps];
  const int32_t* ye = yk ? coefs + m[kYCoef] + y * (yk + 2) : nullptr;
  const int32_t* xe = xk ? coefs + m[kXCoef] + x * (xk + 2) : nullptr;
  int32_t u[3];
  pil_pixel(img, w, c, ye, sy, xe, sx, m[kVerticalFirst] != 0, u);
  for (int k = 0; k < 3; ++k) v[k] = normalise_exact(u[k], nm, k);
}

// Host only: Pillow's filters and coefficients (precompute_coeffs + normalize_coeffs_8bpc),
// evaluated in double in the same order as there.
inline double pil_filter(int filter, double x) {
  if (x < 0.0) x = -x;
  if (filter == kPilBilinear) return x < 1.0 ? 1.0 - x : 0.0;
  if (x < 1.0) return ((-0.5 + 2.0) * x - (-0.5 + 3.0)) * x * x + 1;  // bicubic, a = -0.5
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * -0.5;
  return 0.0;
}

struct PilAxis {
  double scale;
  double support;
  double inv_filterscale;
  int64_t ksize;  // the most taps any output index can have (Pillow's ksize)
};

inline PilAxis pil_axis(int filter, int64_t in_size, int64_t out_size) {
  PilAxis a;
  // Pillow's box edges are floats: (double)(float)in, exact below 2^24.
  a.scale = static_cast<double>(static_cast<float>(in_size)) / static_cast<double>(out_size);
  const double filterscale = a.scale < 1.0 ? 1.0 : a.scale;
  a.support = (filter == kPilBilinear ? 1.0 : 2.0) * filterscale;
  a.inv_filterscale = 1.0 / filterscale;
  a.ksize = static_cast<int64_t>(std::ceil(a.support)) * 2 + 1;
  return a;
}

// Writes the entries of output indices [start, start + count) of an axis resized from in_size
// to out_size, each [first, taps, k_0 .. k_{ksize-1}] (unused k zero). `w` is scratch for ksize
// doubles.
inline void pil_axis_coefs(int filter, int64_t in_size, const PilAxis& a, int64_t start,
                           int64_t count, double* w, int32_t* dst) {
  for (int64_t o = start; o < start + count; ++o) {
    int32_t* e = dst + (o - start) * (a.ksize + 2);
    const double center = (static_cast<double>(o) + 0.5) * a.scale;
    int64_t xmin = static_cast<int64_t>(center - a.support + 0.5);  // truncation, as Pillow's (int)
    if (xmin < 0) xmin = 0;
    int64_t xmax = static_cast<int64_t>(center + a.support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int64_t x = 0; x < xmax; ++x) {
      w[x] = pil_filter(filter, (static_cast<double>(x + xmin) - center + 0.5) * a.inv_filterscale);
      ww += w[x];
    }
    e[0] = static_cast<int32_t>(xmin);
    e[1] = static_cast<int32_t>(xmax);
    for (int64_t x = 0; x < a.ksize; ++x) {
      double k = x < xmax ? w[x] : 0.0;
      if (x < xmax && ww != 0.0) k /= ww;
      const double scaled = k * static_cast<double>(1 << kPilBits);
      e[2 + x] = static_cast<int32_t>(k < 0 ? -0.5 + scaled : 0.5 + scaled);
    }
  }
}

}  // namespace fastmbconv

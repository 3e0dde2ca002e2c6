// Torch-side argument checks of the image-preparation ops, shared by the CPU and CUDA bindings,
// and the host-side table they hand to the loops (image addresses plus Pillow coefficients).
// Python (fastmbconv/prepare.py) validates first with friendlier messages; these TORCH_CHECKs
// guard direct torch.ops calls, so a bad table can never make a loop read or write out of
// bounds.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <array>
#include <cstdint>
#include <limits>
#include <map>
#include <vector>

#include "prepare_math.h"

namespace fastmbconv {

// Columns of prepare_images_v2's int64 (N, kMetaCols) `meta`: which tensor of `images` holds
// the image, its element offset there, its height, width and channels, the size it is resized
// to, and the window (top, left, height, width) of the resized image that is kept.
enum MetaCol : int {
  kMSource = 0,
  kMOffset,
  kMHeight,
  kMWidth,
  kMChannels,
  kMScaledH,
  kMScaledW,
  kMTop,
  kMLeft,
  kMValidH,
  kMValidW,
  kMetaCols
};

// prepare_images (v1): meta rows (source, offset, h, w, rh, rw) and one channel count.
constexpr int kMetaColsV1 = 6;

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

inline bool mul_ok(int64_t a, int64_t b) {  // a, b >= 0
  return a == 0 || b <= std::numeric_limits<int64_t>::max() / a;
}

// The v1 op's (N, 6) meta as a v2 meta: every image resized to (rh, rw) and kept whole.
inline at::Tensor meta_from_v1(const at::Tensor& meta, int64_t channels) {
  TORCH_CHECK(meta.scalar_type() == at::kLong && meta.dim() == 2 && meta.size(1) == kMetaColsV1 &&
                  meta.is_contiguous(),
              "fastmbconv::prepare_images: meta must be a contiguous int64 (N, ", kMetaColsV1,
              ") table, got ", meta.scalar_type(), " ", meta.sizes());
  TORCH_CHECK(meta.device().is_cpu(),
              "fastmbconv::prepare_images: meta must be a CPU tensor, got ", meta.device());
  TORCH_CHECK(channels == 1 || channels == 3,
              "fastmbconv::prepare_images: channels must be 1 or 3, got ", channels);
  const int64_t n = meta.size(0);
  at::Tensor out = at::empty({n, kMetaCols}, meta.options());
  const int64_t* m = meta.const_data_ptr<int64_t>();
  int64_t* o = out.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i, m += kMetaColsV1, o += kMetaCols) {
    const int64_t rh = m[4], rw = m[5];
    const int64_t row[kMetaCols] = {m[0], m[1], m[2], m[3], channels, rh, rw, 0, 0, rh, rw};
    std::copy(row, row + kMetaCols, o);
  }
  return out;
}

// The v1 op on top of a device's v2 implementation: every image resized whole, bilinear.
using PrepareImagesV2 = at::Tensor (*)(at::TensorList, const at::Tensor&, int64_t, int64_t,
                                       int64_t, at::ScalarType, c10::ArrayRef<double>,
                                       c10::ArrayRef<double>);

template <PrepareImagesV2 v2>
at::Tensor prepare_images_v1(at::TensorList images, const at::Tensor& meta, int64_t channels,
                             int64_t out_h, int64_t out_w, at::ScalarType dtype,
                             c10::ArrayRef<double> mean, c10::ArrayRef<double> std_) {
  return v2(images, meta_from_v1(meta, channels), kTorchBilinear, out_h, out_w, dtype, mean,
            std_);
}

// Checks the arguments and builds the loops' table: N rows of kTableCols int64 (see
// prepare_math.h), then the int32 Pillow coefficient area, one buffer so the CUDA binding
// uploads it in one copy. Every image must lie inside its tensor and every window inside its
// resized image.
inline at::Tensor checked_table(at::TensorList images, const at::Tensor& meta, int64_t filter,
                                int64_t out_h, int64_t out_w, at::ScalarType dtype,
                                c10::ArrayRef<double> mean, c10::ArrayRef<double> std_) {
  const char* op = "fastmbconv::prepare_images";
  TORCH_CHECK(!images.empty(), op, ": images is an empty list");
  const c10::Device device = images[0].device();
  for (size_t k = 0; k < images.size(); ++k) {
    const at::Tensor& t = images[k];
    TORCH_CHECK(t.scalar_type() == at::kByte, op, ": images[", k, "] must be uint8, got ",
                t.scalar_type());
    TORCH_CHECK(t.is_contiguous(), op, ": images[", k, "] must be contiguous");
    TORCH_CHECK(t.device() == device, op, ": images[", k, "] is on ", t.device(),
                " but images[0] is on ", device);
  }
  TORCH_CHECK(meta.scalar_type() == at::kLong && meta.dim() == 2 && meta.size(1) == kMetaCols &&
                  meta.is_contiguous(),
              op, ": meta must be a contiguous int64 (N, ", kMetaCols, ") table, got ",
              meta.scalar_type(), " ", meta.sizes());
  TORCH_CHECK(meta.device().is_cpu(), op, ": meta must be a CPU tensor, got ", meta.device());
  TORCH_CHECK(filter == kTorchBilinear || filter == kPilBilinear || filter == kPilBicubic, op,
              ": filter must be 0 (bilinear), 1 (Pillow bilinear) or 2 (Pillow bicubic), got ",
              filter);
  TORCH_CHECK(out_h >= 1 && out_w >= 1 && out_h <= kInt32Max && out_w <= kInt32Max, op,
              ": output size must be in [1, 2^31), got (", out_h, ", ", out_w, ")");
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, op,
              ": dtype must be float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(mean.size() == 3 && std_.size() == 3, op, ": mean and std need 3 values each, got ",
              mean.size(), " and ", std_.size());
  for (int c = 0; c < 3; ++c) {
    TORCH_CHECK(std_[c] != 0.0, op, ": std must be non-zero, got ", std_);
  }
  const int64_t n = meta.size(0);
  TORCH_CHECK(mul_ok(n, 3) && mul_ok(3 * n, out_h) && mul_ok(3 * n * out_h, out_w), op,
              ": output of ", n, " x 3 x ", out_h, " x ", out_w, " elements overflows int64");

  // Pass 1: checks, and one coefficient block per distinct (in, out, start, count) axis.
  using Key = std::array<int64_t, 4>;
  std::map<Key, int64_t> offsets;  // key -> offset of its block in the coefficient area
  std::vector<Key> blocks;
  int64_t coef_words = 0;
  const int64_t* m = meta.const_data_ptr<int64_t>();
  const int64_t num_sources = static_cast<int64_t>(images.size());
  auto block = [&](int64_t in, int64_t out, int64_t start, int64_t count) -> int64_t {
    const Key key{in, out, start, count};
    auto it = offsets.find(key);
    if (it != offsets.end()) return it->second;
    const int64_t k = pil_axis(static_cast<int>(filter), in, out).ksize;
    TORCH_CHECK(k + 2 <= kInt32Max && mul_ok(count, k + 2) &&
                    coef_words <= kInt32Max - count * (k + 2),
                op, ": resizing ", in, " to ", out, " needs ", k,
                " taps per pixel; the coefficient tables would pass 2^31 entries");
    offsets.emplace(key, coef_words);
    blocks.push_back(key);
    coef_words += count * (k + 2);
    return coef_words - count * (k + 2);
  };
  std::vector<std::array<int64_t, 4>> axes(n);  // (y offset, y taps, x offset, x taps)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t* r = m + i * kMetaCols;
    const int64_t src = r[kMSource], off = r[kMOffset], h = r[kMHeight], w = r[kMWidth];
    const int64_t c = r[kMChannels], sh = r[kMScaledH], sw = r[kMScaledW];
    const int64_t top = r[kMTop], left = r[kMLeft], rh = r[kMValidH], rw = r[kMValidW];
    TORCH_CHECK(src >= 0 && src < num_sources, op, ": image ", i, " names images[", src,
                "] but there are ", num_sources, " tensors");
    TORCH_CHECK(h >= 1 && w >= 1, op, ": image ", i, " is empty (height ", h, ", width ", w, ")");
    TORCH_CHECK(c == 1 || c == 3, op, ": image ", i, " has ", c, " channels; need 1 or 3");
    TORCH_CHECK(rh >= 1 && rw >= 1 && rh <= out_h && rw <= out_w, op, ": image ", i,
                " resized to (", rh, ", ", rw, ") does not fit the output (", out_h, ", ",
                out_w, ")");
    TORCH_CHECK(h <= kInt32Max && w <= kInt32Max && sh <= kInt32Max && sw <= kInt32Max &&
                    top >= 0 && left >= 0 && top <= sh - rh && left <= sw - rw,
                op, ": image ", i, ": window (", top, ", ", left, ") + (", rh, ", ", rw,
                ") lies outside its resized size (", sh, ", ", sw, ")");
    const int64_t numel = images[src].numel();
    TORCH_CHECK(off >= 0 && mul_ok(h, w) && mul_ok(h * w, c) && h * w * c <= numel &&
                    off <= numel - h * w * c,
                op, ": image ", i, " (offset ", off, ", ", h, " x ", w, " x ", c,
                ") lies outside images[", src, "] (", numel, " bytes)");
    axes[i] = {0, 0, 0, 0};
    if (filter != kTorchBilinear) {
      // Pillow skips the pass of an axis whose size is unchanged (K = 0 marks it).
      if (sh != h) {
        axes[i][0] = block(h, sh, top, rh);
        axes[i][1] = pil_axis(static_cast<int>(filter), h, sh).ksize;
      }
      if (sw != w) {
        axes[i][2] = block(w, sw, left, rw);
        axes[i][3] = pil_axis(static_cast<int>(filter), w, sw).ksize;
      }
    }
  }

  at::Tensor table = at::empty({n * kTableCols + (coef_words + 1) / 2}, meta.options());
  int64_t* tab = table.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t* r = m + i * kMetaCols;
    int64_t* t = tab + i * kTableCols;
    const at::Tensor& src = images[r[kMSource]];
    t[kAddr] = static_cast<int64_t>(
        reinterpret_cast<uintptr_t>(src.const_data_ptr<uint8_t>() + r[kMOffset]));
    static_assert(kValidW - kHeight == kMValidW - kMHeight, "meta and table columns align");
    for (int col = kMHeight; col <= kMValidW; ++col) t[kHeight + col - kMHeight] = r[col];
    t[kYCoef] = axes[i][0];
    t[kYTaps] = axes[i][1];
    t[kXCoef] = axes[i][2];
    t[kXTaps] = axes[i][3];
    t[kVerticalFirst] = pil_vertical_first(r[kMHeight], r[kMWidth], r[kMScaledH], r[kMScaledW]);
  }
  // Pass 2: the coefficients, one block per task.
  int32_t* coefs = reinterpret_cast<int32_t*>(tab + n * kTableCols);
  const int64_t nblocks = static_cast<int64_t>(blocks.size());
  at::parallel_for(0, nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> scratch;
    for (int64_t b = begin; b < end; ++b) {
      const Key& key = blocks[b];
      const PilAxis a = pil_axis(static_cast<int>(filter), key[0], key[1]);
      scratch.resize(a.ksize);
      pil_axis_coefs(static_cast<int>(filter), key[0], a, key[2], key[3], scratch.data(),
                     coefs + offsets.at(key));
    }
  });
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
    nm.mean[c] = static_cast<float>(mean[c]);
    nm.std[c] = static_cast<float>(std_[c]);
  }
  return nm;
}

}  // namespace fastmbconv

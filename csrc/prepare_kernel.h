// Launcher of the CUDA image-preparation kernel. Raw pointers and cudaStream_t only: no torch
// headers, so prepare_kernel.cu compiles with a bare nvcc (the CI compile check does that).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "prepare_math.h"

namespace fastmbconv {

enum class OutDType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// One launch for the whole batch.
//   table:  the device copy of checked_table's buffer (see prepare_math.h): n rows of
//           kTableCols int64 (each image's device address, sizes, window, coefficient offsets),
//           then the int32 Pillow coefficients
//   filter: kTorchBilinear, kPilBilinear or kPilBicubic
//   out:    (n, out_h, out_w, 3) contiguous buffer of `dtype` (a channels_last NCHW tensor)
// The caller has validated the table (every image inside its tensor, every window inside its
// resized image and the output, ...). Indexing is int64 throughout. Returns the launch status
// (cudaGetLastError()).
cudaError_t launch_prepare_images(const int64_t* table, int64_t n, int filter, int64_t out_h,
                                  int64_t out_w, Norm norm, OutDType dtype, void* out,
                                  cudaStream_t stream);

}  // namespace fastmbconv

// llama_shared/native/quantized_matmul.h as a C function (called through ctypes), its tasks run by
// an OpenMP team: built with -fopenmp and loaded after torch, this binds to torch's libgomp.

#include <vector>

#include "quantized_matmul.h"

// ys[i] = x W_i^T for `count` layers that multiply the same x (q, k and v; gate and up share one
// call), on `threads` threads (the caller's included); offsets[i] null for a symmetric layer. The
// error, or null when it ran.
extern "C" const char* llama_twin_quantized_matmul(int bits, const float* x, int64_t count,
                                                    const uint8_t* const* codes, const float* const* scales,
                                                    const float* const* offsets, float* const* ys,
                                                    const int64_t* outs, int64_t rows, int64_t in,
                                                    int64_t code_columns, int64_t groups, int64_t threads) {
  if (bits != 4 && bits != 8) return "quantized_matmul: bits must be 4 or 8";
  std::vector<llama_twin::Segment> segments;
  for (int64_t i = 0; i < count; ++i) {
    if (const char* error = llama_twin::shape_error(bits, in, code_columns, outs[i], outs[i], groups, 0)) return error;
    segments.push_back({codes[i], scales[i], offsets[i], ys[i], outs[i]});
  }
  llama_twin::quantized_matmul(bits, x, segments.data(), count, rows, in, groups, threads - 1,
                               [](int64_t helpers, auto task) {
#pragma omp parallel num_threads(helpers + 1)
                                 task();
                               });
  return nullptr;
}

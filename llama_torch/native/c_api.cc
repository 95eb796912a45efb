// llama_shared/native/quantized_matmul.h as a C function (called through ctypes), its tasks run by
// an OpenMP team: built with -fopenmp and loaded after torch, this binds to torch's libgomp.

#include "quantized_matmul.h"

// y = x W^T on `threads` threads (the caller's included); the error, or null when it ran.
extern "C" const char* llama_twin_quantized_matmul(int bits, const float* x, const uint8_t* codes,
                                                    const float* scales, const float* offsets, float* y,
                                                    int64_t rows, int64_t in, int64_t code_columns,
                                                    int64_t out, int64_t groups, int64_t threads) {
  if (bits != 4 && bits != 8) return "quantized_matmul: bits must be 4 or 8";
  if (const char* error = llama_twin::shape_error(bits, in, code_columns, out, out, groups, 0)) return error;
  llama_twin::quantized_matmul(bits, x, codes, scales, offsets, y, rows, in, out, groups, threads - 1,
                               [](int64_t helpers, auto task) {
#pragma omp parallel num_threads(helpers + 1)
                                 task();
                               });
  return nullptr;
}

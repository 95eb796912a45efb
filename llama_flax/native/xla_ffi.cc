// llama_shared/native/quantized_matmul.h as XLA FFI handlers for the CPU, their helpers taken from
// XLA's intra-op thread pool (__init__.py builds and registers them).

#include <functional>

#include "quantized_matmul.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

template <int Bits, ffi::DataType CodeType>
ffi::Error quantized_matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<CodeType> codes,
                            ffi::Buffer<ffi::F32> scales, ffi::Buffer<ffi::F32> offsets,
                            ffi::ResultBuffer<ffi::F32> y) {
  auto x_dims = x.dimensions(), code_dims = codes.dimensions(), scale_dims = scales.dimensions();
  if (x_dims.size() != 2 || code_dims.size() != 2 || scale_dims.size() != 2)
    return ffi::Error::InvalidArgument("quantized_matmul: x, codes and scales must be 2-D");
  const int64_t rows = x_dims[0], in = x_dims[1], out = code_dims[0], groups = scale_dims[1];
  if (const char* error = llama_twin::shape_error(Bits, in, code_dims[1], out, scale_dims[0], groups,
                                                  offsets.element_count()))
    return ffi::Error::InvalidArgument(error);
  llama_twin::quantized_matmul(
      Bits, x.typed_data(), reinterpret_cast<const uint8_t*>(codes.typed_data()), scales.typed_data(),
      offsets.element_count() ? offsets.typed_data() : nullptr, y->typed_data(), rows, in, out, groups,
      pool.num_threads() - 1, [&pool](int64_t helpers, auto task) {
        for (int64_t h = 0; h < helpers; ++h) pool.Schedule(std::function<void()>(task));
        task();
      });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LlamaTwinInt8Matmul, (quantized_matmul<8, ffi::S8>),
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(LlamaTwinInt4Matmul, (quantized_matmul<4, ffi::U8>),
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// llama_shared/native/quantized_matmul.h as XLA FFI handlers for the CPU, their helpers taken from
// XLA's intra-op thread pool (__init__.py builds and registers them).

#include <functional>
#include <vector>

#include "quantized_matmul.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// y_i = x W_i^T for each layer i, its codes, scales and offsets the arguments after x in threes:
// layers that multiply the same x (q, k and v; gate and up) share one call.
template <int Bits, ffi::DataType CodeType>
ffi::Error quantized_matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::RemainingArgs layers,
                            ffi::RemainingRets ys) {
  auto x_dims = x.dimensions();
  if (x_dims.size() != 2 || layers.size() == 0 || layers.size() != 3 * ys.size())
    return ffi::Error::InvalidArgument(
        "quantized_matmul: x must be 2-D, and each result needs codes, scales and offsets");
  const int64_t rows = x_dims[0], in = x_dims[1];
  std::vector<llama_twin::Segment> segments;
  int64_t groups = 0;
  for (size_t i = 0; i < ys.size(); ++i) {
    auto codes = layers.get<ffi::Buffer<CodeType>>(3 * i);
    auto scales = layers.get<ffi::Buffer<ffi::F32>>(3 * i + 1);
    auto offsets = layers.get<ffi::Buffer<ffi::F32>>(3 * i + 2);
    auto y = ys.get<ffi::Buffer<ffi::F32>>(i);
    if (!codes.has_value() || !scales.has_value() || !offsets.has_value() || !y.has_value())
      return ffi::Error::InvalidArgument(
          "quantized_matmul: a layer's codes, scales, offsets or result has the wrong type");
    auto code_dims = codes->dimensions(), scale_dims = scales->dimensions();
    if (code_dims.size() != 2 || scale_dims.size() != 2 || (i > 0 && scale_dims[1] != groups))
      return ffi::Error::InvalidArgument(
          "quantized_matmul: codes and scales must be 2-D, every layer with the same groups");
    groups = scale_dims[1];
    if (const char* error = llama_twin::shape_error(Bits, in, code_dims[1], code_dims[0], scale_dims[0], groups,
                                                    offsets->element_count()))
      return ffi::Error::InvalidArgument(error);
    segments.push_back({reinterpret_cast<const uint8_t*>(codes->typed_data()), scales->typed_data(),
                        offsets->element_count() ? offsets->typed_data() : nullptr, (*y)->typed_data(), code_dims[0]});
  }
  llama_twin::quantized_matmul(Bits, x.typed_data(), segments.data(), segments.size(), rows, in, groups,
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
                                  .RemainingArgs()
                                  .RemainingRets());

XLA_FFI_DEFINE_HANDLER_SYMBOL(LlamaTwinInt4Matmul, (quantized_matmul<4, ffi::U8>),
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets());

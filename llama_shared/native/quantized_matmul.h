// Weight-only int8 / int4 products on the CPU, for both twins: llama_flax/native/xla_ffi.cc binds
// them to XLA's FFI, llama_torch/native/c_api.cc to a C function on an OpenMP team.
//
// y (rows, out) = x (rows, in) times the quantized W (out, in) of llama_shared.quantization's format,
// in float32, without ever writing a dequantized weight: each thread walks its share of the output
// rows, reading the codes once. A weight is code * scale + offset per group of input columns, the
// offset being -zero * scale, or min - qmin * scale for float zero points (computed by the caller);
// so a group adds scale * sum(x * code) + offset * sum(x). int4 codes are read as their unsigned
// nibbles (code + 8): their offset gains -8 * scale, and the low / high nibbles meet the even / odd
// input columns, which the call splits once. Loops over LANES floats vectorise as written
// (-O3 -march=native); the sums are float32 in another order than the portable product's.

#pragma once

#include <algorithm>
#include <atomic>
#include <cstring>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace llama_twin {

constexpr int64_t ROWS_PER_TASK = 16;
constexpr int X_ROWS = 4;  // input rows multiplied together by one decoded weight row

// Eight lanes in GCC / Clang vector extensions: AVX2 registers with -march=native on x86, two NEON
// registers on ARM.
typedef float f32x8 __attribute__((vector_size(32)));
typedef int8_t i8x8 __attribute__((vector_size(8)));
typedef uint8_t u8x8 __attribute__((vector_size(8)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
constexpr int64_t LANES = 8;
constexpr int64_t GROUP_MULTIPLE = 2 * LANES;  // columns: 16 codes per int8 step, 8 bytes per int4 one

inline f32x8 load(const float* p) { f32x8 v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, f32x8 v) { std::memcpy(p, &v, sizeof v); }
// Eight bytes widened to int32 lanes (vpmovsxbd / vpmovzxbd on AVX2: GCC 12 widens the generic
// form's bytes one by one), and int32 lanes to floats.
inline i32x8 widen_signed(const uint8_t* p) {
#if defined(__AVX2__)
  return i32x8(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#else
  i8x8 v;
  std::memcpy(&v, p, sizeof v);
  return __builtin_convertvector(v, i32x8);
#endif
}
inline i32x8 widen_unsigned(const uint8_t* p) {
#if defined(__AVX2__)
  return i32x8(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#else
  u8x8 v;
  std::memcpy(&v, p, sizeof v);
  return __builtin_convertvector(v, i32x8);
#endif
}
inline f32x8 to_float(i32x8 v) { return __builtin_convertvector(v, f32x8); }
inline float total(f32x8 v) {
  float sum = 0;
  for (int k = 0; k < LANES; ++k) sum += v[k];
  return sum;
}

// The layer as the kernels see it: every pointer row-major, offsets null for a symmetric layer.
struct Layer {
  const float* x;           // (rows, in); for int4 (rows, 2, in / 2): even columns, then odd ones
  const uint8_t* codes;     // (out, in) int8 codes, or (out, in / 2) bytes of two nibbles
  const float* scales;      // (out, groups)
  const float* offsets;     // (out, groups) or null
  const float* group_sums;  // (rows, groups): sum of x over each group's columns
  float* y;                 // (rows, out)
  int64_t bits, rows, in, out, groups, group_size;

  float offset(int64_t o, int64_t g) const {  // of the stored code, for int4 the nibble (code + 8)
    return (offsets ? offsets[o * groups + g] : 0.0f) - (bits == 4 ? 8.0f * scales[o * groups + g] : 0.0f);
  }
};

// sum over groups of offset * sum(x) for output row o and the first input row.
inline float offset_sum(const Layer& l, int64_t o) {
  float sum = 0;
  if (l.offsets || l.bits == 4)
    for (int64_t g = 0; g < l.groups; ++g) sum += l.offset(o, g) * l.group_sums[g];
  return sum;
}

// Output row o for one input row: a group adds scale * sum(x * code); offset_sum adds the rest.
// Four accumulators, so that the FMAs of one group do not wait on each other.
inline float row_int8(const Layer& l, int64_t o) {
  const uint8_t* codes = l.codes + o * l.in;
  f32x8 acc = {};
  for (int64_t g = 0; g < l.groups; ++g) {
    f32x8 part[4] = {};
    int64_t i = g * l.group_size;
    const int64_t end = i + l.group_size;
    for (; i + 4 * LANES <= end; i += 4 * LANES)
      for (int k = 0; k < 4; ++k) part[k] += load(l.x + i + k * LANES) * to_float(widen_signed(codes + i + k * LANES));
    for (; i < end; i += LANES) part[0] += load(l.x + i) * to_float(widen_signed(codes + i));
    acc += l.scales[o * l.groups + g] * ((part[0] + part[1]) + (part[2] + part[3]));
  }
  return total(acc) + offset_sum(l, o);
}

// The same for int4: low nibbles meet the even columns (x[0, in / 2)), high ones the odd. (Four
// accumulators were no faster here: unpacking the nibbles, not the FMAs' latency, bounds this loop.)
inline float row_int4(const Layer& l, int64_t o) {
  const int64_t half = l.in / 2, group_bytes = l.group_size / 2;
  const uint8_t* bytes = l.codes + o * half;
  f32x8 acc = {};
  for (int64_t g = 0; g < l.groups; ++g) {
    f32x8 even = {}, odd = {};
    for (int64_t j = g * group_bytes; j < (g + 1) * group_bytes; j += LANES) {
      const i32x8 b = widen_unsigned(bytes + j);
      even += load(l.x + j) * to_float(b & 15);
      odd += load(l.x + half + j) * to_float(b >> 4);
    }
    acc += l.scales[o * l.groups + g] * (even + odd);
  }
  return total(acc) + offset_sum(l, o);
}

// Output row o as float values, in x's column order (for int4 the split one), into w.
inline void decode_row(const Layer& l, int64_t o, float* w) {
  for (int64_t g = 0; g < l.groups; ++g) {
    const f32x8 scale = f32x8{} + l.scales[o * l.groups + g], offset = f32x8{} + l.offset(o, g);
    if (l.bits == 8) {
      const uint8_t* codes = l.codes + o * l.in;
      for (int64_t i = g * l.group_size; i < (g + 1) * l.group_size; i += LANES)
        store(w + i, to_float(widen_signed(codes + i)) * scale + offset);
    } else {
      const int64_t half = l.in / 2, group_bytes = l.group_size / 2;
      const uint8_t* bytes = l.codes + o * half;
      for (int64_t j = g * group_bytes; j < (g + 1) * group_bytes; j += LANES) {
        const i32x8 b = widen_unsigned(bytes + j);
        store(w + j, to_float(b & 15) * scale + offset);
        store(w + half + j, to_float(b >> 4) * scale + offset);
      }
    }
  }
}

// y[r .. r + N - 1, o] from output row o's float values w: the N input rows share each load of w.
template <int N>
inline void dots(const Layer& l, const float* w, int64_t r, int64_t o) {
  f32x8 acc[N] = {};
  for (int64_t i = 0; i < l.in; i += LANES) {
    const f32x8 weights = load(w + i);
    for (int n = 0; n < N; ++n) acc[n] += load(l.x + (r + n) * l.in + i) * weights;
  }
  for (int n = 0; n < N; ++n) l.y[(r + n) * l.out + o] = total(acc[n]);
}

// Output rows [begin, end): one input row reads the codes straight into the product; more rows
// decode each weight row once into a float buffer, then multiply it by X_ROWS input rows at a time.
inline void run_rows(const Layer& l, int64_t begin, int64_t end) {
  if (l.rows == 1) {
    for (int64_t o = begin; o < end; ++o) l.y[o] = l.bits == 8 ? row_int8(l, o) : row_int4(l, o);
    return;
  }
  std::vector<float> w(l.in);
  for (int64_t o = begin; o < end; ++o) {
    decode_row(l, o, w.data());
    int64_t r = 0;
    for (; r + X_ROWS <= l.rows; r += X_ROWS) dots<X_ROWS>(l, w.data(), r, o);
    for (; r < l.rows; ++r) dots<1>(l, w.data(), r, o);
  }
}

// Why these shapes do not describe one layer the kernel takes (nullptr: they do).
inline const char* shape_error(int bits, int64_t in, int64_t code_columns, int64_t out, int64_t scale_rows,
                               int64_t groups, int64_t offset_count) {
  if (code_columns != (bits == 8 ? in : in / 2) || scale_rows != out || groups <= 0 || in % groups)
    return "quantized_matmul: codes, scales and x do not describe one layer";
  if ((in / groups) % GROUP_MULTIPLE) return "quantized_matmul: groups must span a multiple of 16 columns";
  if (offset_count != 0 && offset_count != out * groups)
    return "quantized_matmul: offsets must be empty or shaped like scales";
  return nullptr;
}

// y = x W^T for a layer whose shapes passed shape_error. Output rows go in tasks of ROWS_PER_TASK,
// claimed from a shared counter by every thread that runs task(): on_threads(helpers, task) runs
// it on the calling thread and on up to `helpers` others (returning before they finish, or not).
// The caller then waits only for tasks already claimed, so a helper that starts late (its thread
// busy elsewhere) finds nothing left and holds nothing up.
template <typename OnThreads>
void quantized_matmul(int bits, const float* x, const uint8_t* codes, const float* scales, const float* offsets,
                      float* y, int64_t rows, int64_t in, int64_t out, int64_t groups, int64_t helpers,
                      OnThreads&& on_threads) {
  struct Work {
    Layer layer;
    int64_t tasks;
    std::atomic<int64_t> next{0}, done{0};
    void drain() {
      for (int64_t t; (t = next.fetch_add(1)) < tasks; done.fetch_add(1)) {
        int64_t begin = t * ROWS_PER_TASK;
        run_rows(layer, begin, std::min(begin + ROWS_PER_TASK, layer.out));
      }
    }
  };
  // Per input row: the sum of each group's columns; for int4 the even columns, then the odd ones.
  const int64_t group_size = in / groups;
  std::vector<float> split(bits == 8 ? 0 : rows * in), sums(rows * groups);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * in;
    for (int64_t g = 0; g < groups; ++g) {
      float sum = 0;
      for (int64_t i = g * group_size; i < (g + 1) * group_size; ++i) sum += row[i];
      sums[r * groups + g] = sum;
    }
    for (int64_t j = 0; bits == 4 && j < in / 2; ++j) {
      split[r * in + j] = row[2 * j];
      split[r * in + in / 2 + j] = row[2 * j + 1];
    }
  }
  auto work = std::make_shared<Work>();
  work->layer = Layer{bits == 8 ? x : split.data(), codes, scales, offsets, sums.data(), y,
                      bits, rows, in, out, groups, group_size};
  work->tasks = (out + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
  on_threads(std::max<int64_t>(0, std::min(helpers, work->tasks - 1)), [work] { work->drain(); });
  while (work->done.load(std::memory_order_acquire) < work->tasks) std::this_thread::yield();
}

}  // namespace llama_twin

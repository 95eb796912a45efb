// Weight-only int8 / int4 products on the CPU, for both twins: llama_flax/native/xla_ffi.cc binds
// them to XLA's FFI, llama_torch/native/c_api.cc to a C function on an OpenMP team.
//
// y (rows, out) = x (rows, in) times the quantized W (out, in) of llama_shared.quantization's format,
// without ever writing a dequantized weight: each thread walks its share of the output rows, reading
// the codes once. One call may multiply several layers by the same x (Segment: q, k and v; gate and
// up), preparing x once for them all. A weight is code * scale + offset per group of input columns,
// the offset being -zero * scale, or min - qmin * scale for float zero points (computed by the
// caller); so a group adds scale * sum(x * code) + offset * sum(x), the sums of x taken in float32.
// int4 codes are read as their unsigned nibbles (code + 8), their offset gaining -8 * scale.
//
// One input row (decoding) multiplies the codes in integer SIMD: x is rounded to int16 in blocks of
// X_BLOCK columns (round_row; tests/twins/test_quantization.py's rounded_to_int16 is its numpy
// model), the codes meet it in vpmaddwd's int32 sums, and each sum is scaled once by its weight group's scale times
// its block's. Several input rows decode W_ROWS weight rows to float32 at a time and share them: up
// to 7 in dot products along the columns (dots), more as x transposed, each weight broadcast (tile).
// Loops over LANES floats vectorise as written (-O3 -march=native).

#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <cstring>
#include <cstdint>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace llama_twin {

// Bytes of codes per task: each thread streams long runs of consecutive rows (tasks of 16 rows, 8 KB
// of int4 codes, interleaved between two threads ran 1.3-1.5x slower: the prefetchers lost the stream).
constexpr int64_t TASK_BYTES = 128 << 10;
// How far ahead of the codes being multiplied the one-row products ask for the next ones, a cache
// line per turn of their loops. Measured in one process alternating with the unprefetched kernel
// (benchmarks/log/2026-12-03-quantization.md), a decoding step's products took a median ~5% less
// time (0-9% over five runs, int4 and int8): the hardware prefetchers alone left the core waiting
// on memory between bursts of arithmetic.
constexpr int64_t PREFETCH_BYTES = 2048;
constexpr int W_ROWS = 12;  // weight rows decoded and multiplied together (several input rows)
// Input rows from which tile() (which pads them to a multiple of LANES) takes over from dots(): one
// thread, level at 8-10 rows, 1.5-2x at 16-32, 0.6-0.8x below 8 (benchmarks/log/2026-12-03-quantization.md).
constexpr int TILE_ROWS = 8;
// Floats between the decoded rows' starts beyond their width: rows 4 KB apart would share L1 sets.
constexpr int64_t W_ROW_PADDING = 16;
constexpr int64_t X_BLOCK = 32;      // columns of x rounded to int16 with one scale (one input row)
constexpr float X_LEVELS = 32767;    // the block's largest |x| becomes +-X_LEVELS
constexpr int64_t NIBBLE_STEP = 64;  // int4 columns per 32-byte load: 16 words of four nibbles
constexpr float NIBBLE_OFFSET = 8;   // an int4 code is stored as the nibble code + NIBBLE_OFFSET

// Eight lanes in GCC / Clang vector extensions: AVX2 registers with -march=native on x86, two NEON
// registers on ARM.
typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef int16_t i16x16 __attribute__((vector_size(32)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef int8_t i8x16 __attribute__((vector_size(16)));
typedef int16_t i16x8 __attribute__((vector_size(16)));
constexpr int64_t LANES = 8;
constexpr int64_t GROUP_MULTIPLE = 2 * LANES;  // columns: int8 codes are read 16 at a time

template <typename V>
inline V load_as(const void* p) { V v; std::memcpy(&v, p, sizeof v); return v; }
inline f32x8 load(const float* p) { return load_as<f32x8>(p); }
// One float in every lane (vbroadcastss; `f32x8{} + v` would add, v being possibly -0).
inline f32x8 splat(float v) { return f32x8{v, v, v, v, v, v, v, v}; }
inline void store(float* p, f32x8 v) { std::memcpy(p, &v, sizeof v); }
// Eight bytes, read as Byte (int8_t or uint8_t), widened to int32 lanes (vpmovsxbd / vpmovzxbd on
// AVX2: GCC 12 widens the generic form's bytes one by one), and int32 lanes to floats.
template <typename Byte>
inline i32x8 widen(const uint8_t* p) {
#if defined(__AVX2__)
  const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return i32x8(std::is_signed_v<Byte> ? _mm256_cvtepi8_epi32(bytes) : _mm256_cvtepu8_epi32(bytes));
#else
  typedef Byte byte_x8 __attribute__((vector_size(8)));
  return __builtin_convertvector(load_as<byte_x8>(p), i32x8);
#endif
}
inline f32x8 to_float(i32x8 v) { return __builtin_convertvector(v, f32x8); }
// Each lane rounded to the nearest integer, ties to even, as std::nearbyint in the default rounding
// mode (vcvtps2dq on AVX2; __builtin_convertvector would truncate).
inline i32x8 nearest(f32x8 v) {
#if defined(__AVX2__)
  return i32x8(_mm256_cvtps_epi32(__m256(v)));
#else
  i32x8 r;
  for (int k = 0; k < LANES; ++k) r[k] = int32_t(std::nearbyint(v[k]));
  return r;
#endif
}
// Ask for the codes PREFETCH_BYTES past these (a hint: it never faults, past the end included).
inline void prefetch(const uint8_t* codes) { __builtin_prefetch(codes + PREFETCH_BYTES, 0, 3); }
// Sixteen int8 codes widened to int16 lanes (vpmovsxbw).
inline i16x16 widen_to_words(const uint8_t* p) {
#if defined(__AVX2__)
  return i16x16(_mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#else
  return __builtin_convertvector(load_as<i8x16>(p), i16x16);
#endif
}
// Products of int16 lanes summed in adjacent pairs into int32 lanes (vpmaddwd).
inline i32x8 multiply_pairs(i16x16 a, i16x16 b) {
#if defined(__AVX2__)
  return i32x8(_mm256_madd_epi16(__m256i(a), __m256i(b)));
#else
  const i32x8 ea = __builtin_convertvector(__builtin_shufflevector(a, a, 0, 2, 4, 6, 8, 10, 12, 14), i32x8);
  const i32x8 oa = __builtin_convertvector(__builtin_shufflevector(a, a, 1, 3, 5, 7, 9, 11, 13, 15), i32x8);
  const i32x8 eb = __builtin_convertvector(__builtin_shufflevector(b, b, 0, 2, 4, 6, 8, 10, 12, 14), i32x8);
  const i32x8 ob = __builtin_convertvector(__builtin_shufflevector(b, b, 1, 3, 5, 7, 9, 11, 13, 15), i32x8);
  return ea * eb + oa * ob;
#endif
}
inline float total(f32x8 v) {
  float sum = 0;
  for (int k = 0; k < LANES; ++k) sum += v[k];
  return sum;
}

// The layer as the kernels see it: every pointer row-major, offsets null for a symmetric layer.
struct Layer {
  // Several input rows, for int4 even columns first, then odd ones: below TILE_ROWS x (rows, in),
  // else x^T (in, padded_rows) and padded_rows the rows to a multiple of LANES.
  const float* x;
  const float* xt;
  const uint8_t* codes;     // (out, in) int8 codes, or (out, in / 2) bytes of two nibbles
  const float* scales;      // (out, groups)
  const float* offsets;     // (out, groups) or null
  const float* group_sums;  // (rows, groups): sum of x over each group's columns
  float* y;                 // (rows, out)
  int64_t bits, rows, padded_rows, in, out, groups, group_size;
  // One input row, rounded: x ~ x_codes * x_scales[column / X_BLOCK]. For int4 each full NIBBLE_STEP
  // of x_codes lists the columns in the order of nibble_products' four nibble positions, and
  // lane_x_scales holds the x scale of each of its int32 lanes (8 columns apiece).
  const int16_t* x_codes;
  const float* x_scales;
  const float* lane_x_scales;

  float offset(int64_t o, int64_t g) const {  // of the stored code, for int4 the nibble (code + 8)
    return (offsets ? offsets[o * groups + g] : 0.0f) - (bits == 4 ? NIBBLE_OFFSET * scales[o * groups + g] : 0.0f);
  }
};

// The dot product of n floats (vectorised LANES at a time, the rest one by one).
inline float dot(const float* a, const float* b, int64_t n) {
  f32x8 acc = {};
  int64_t i = 0;
  for (; i + LANES <= n; i += LANES) acc += load(a + i) * load(b + i);
  float sum = total(acc);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// sum over groups of offset * sum(x) for output row o and the first input row: the stored offsets'
// dot with the group sums, less for int4 NIBBLE_OFFSET times the scales' dot with them.
inline float offset_sum(const Layer& l, int64_t o) {
  float sum = l.offsets ? dot(l.offsets + o * l.groups, l.group_sums, l.groups) : 0.0f;
  if (l.bits == 4) sum -= NIBBLE_OFFSET * dot(l.scales + o * l.groups, l.group_sums, l.groups);
  return sum;
}

// The group of column c, for columns visited in increasing order (no division in the loops).
class GroupCursor {
 public:
  explicit GroupCursor(int64_t group_size) : size_(group_size), end_(group_size) {}
  int64_t operator()(int64_t c) {
    while (c >= end_) ++group_, end_ += size_;
    return group_;
  }

 private:
  int64_t size_, end_, group_ = 0;
};

// Output row o for one input row, int8: an X_BLOCK's int32 sums at a time (two blocks per turn, into
// two accumulators), scaled by the weight group's scale times x's. Groups that end mid-block (16, 48,
// ... columns) take sixteen columns at a time instead.
inline float row_int8(const Layer& l, int64_t o) {
  const uint8_t* codes = l.codes + o * l.in;
  const float* scales = l.scales + o * l.groups;
  GroupCursor group(l.group_size);
  auto sixteen = [&](int64_t c) { return multiply_pairs(widen_to_words(codes + c), load_as<i16x16>(l.x_codes + c)); };
  f32x8 even = {}, odd = {};
  if (l.group_size % X_BLOCK) {
    for (int64_t c = 0; c < l.in; c += 16) even += to_float(sixteen(c)) * (scales[group(c)] * l.x_scales[c / X_BLOCK]);
    return total(even) + offset_sum(l, o);
  }
  auto block = [&](int64_t c) {
    return to_float(sixteen(c) + sixteen(c + 16)) * (scales[group(c)] * l.x_scales[c / X_BLOCK]);
  };
  int64_t c = 0;
  for (; c + 2 * X_BLOCK <= l.in; c += 2 * X_BLOCK) {
    prefetch(codes + c);
    even += block(c);
    odd += block(c + X_BLOCK);
  }
  if (c < l.in) even += block(c);
  return total(even + odd) + offset_sum(l, o);
}

// The 16 int32 lanes' worth of one NIBBLE_STEP: its 32 bytes read as 16 words, nibble k of word w
// being column 4w + k, meet x_codes' four runs of 16 (one per nibble position) in vpmaddwd; lane i
// sums columns [8i, 8i + 8).
inline i32x8 nibble_products(const uint8_t* bytes, const int16_t* x) {
  const u16x16 words = load_as<u16x16>(bytes);
  return (multiply_pairs(i16x16(words & 15), load_as<i16x16>(x)) +
          multiply_pairs(i16x16((words >> 4) & 15), load_as<i16x16>(x + 16))) +
         (multiply_pairs(i16x16((words >> 8) & 15), load_as<i16x16>(x + 32)) +
          multiply_pairs(i16x16(words >> 12), load_as<i16x16>(x + 48)));
}

// The weight scale of each lane of the NIBBLE_STEP at column c. GROUP: the group size when it is 16
// or 32 (on AVX2, lanes spread from one load by vpermps), else 0: groups span whole steps.
template <int GROUP>
inline f32x8 lane_scales(const float* scales, int64_t c, GroupCursor& group) {
#if defined(__AVX2__)
  if constexpr (GROUP == 16)
    return f32x8(_mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(scales + c / 16)),
                                          _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3)));
  if constexpr (GROUP == 32)
    return f32x8(_mm256_permutevar8x32_ps(
        _mm256_castps128_ps256(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(scales + c / 32)))),
        _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1)));
#endif
  if constexpr (GROUP == 0) {
    return splat(scales[group(c)]);
  } else {
    f32x8 lanes;
    for (int i = 0; i < LANES; ++i) lanes[i] = scales[(c + 8 * i) / GROUP];
    return lanes;
  }
}

// Output row o for one input row, int4: NIBBLE_STEP columns of int32 sums at a time (two steps per
// turn, into two accumulators), each lane scaled by its weight group's scale times x's; a last 16 to
// 48 columns one by one.
template <int GROUP>
inline float row_int4(const Layer& l, int64_t o) {
  const uint8_t* bytes = l.codes + o * (l.in / 2);
  const float* scales = l.scales + o * l.groups;
  GroupCursor group(l.group_size);
  auto step = [&](int64_t c) {
    const f32x8 lane_scale = lane_scales<GROUP>(scales, c, group) * load(l.lane_x_scales + c / LANES);
    return to_float(nibble_products(bytes + c / 2, l.x_codes + c)) * lane_scale;
  };
  f32x8 even = {}, odd = {};
  int64_t c = 0;
  for (; c + 2 * NIBBLE_STEP <= l.in; c += 2 * NIBBLE_STEP) {
    prefetch(bytes + c / 2);
    even += step(c);
    odd += step(c + NIBBLE_STEP);
  }
  if (c + NIBBLE_STEP <= l.in) even += step(c), c += NIBBLE_STEP;
  float rest = 0;
  for (; c < l.in; ++c)
    rest += float(((bytes[c / 2] >> (4 * (c & 1))) & 15) * l.x_codes[c]) * (scales[group(c)] * l.x_scales[c / X_BLOCK]);
  return total(even + odd) + rest + offset_sum(l, o);
}

// The one-row product for this layer's code width and group size.
inline float (*row_product(const Layer& l))(const Layer&, int64_t) {
  if (l.bits == 8) return row_int8;
  const int64_t g = l.group_size;
  return g == 16 ? row_int4<16> : g == 32 ? row_int4<32> : row_int4<0>;
}

// Output row o as float values into w, in x^T's column order (for int4 even columns first, then odd ones).
inline void decode_row(const Layer& l, int64_t o, float* w) {
  for (int64_t g = 0; g < l.groups; ++g) {
    const f32x8 scale = splat(l.scales[o * l.groups + g]), offset = splat(l.offset(o, g));
    if (l.bits == 8) {
      const uint8_t* codes = l.codes + o * l.in;
      for (int64_t i = g * l.group_size; i < (g + 1) * l.group_size; i += LANES)
        store(w + i, to_float(widen<int8_t>(codes + i)) * scale + offset);
    } else {
      const int64_t half = l.in / 2, group_bytes = l.group_size / 2;
      const uint8_t* bytes = l.codes + o * half;
      for (int64_t j = g * group_bytes; j < (g + 1) * group_bytes; j += LANES) {
        const i32x8 b = widen<uint8_t>(bytes + j);
        store(w + j, to_float(b & 15) * scale + offset);
        store(w + half + j, to_float(b >> 4) * scale + offset);
      }
    }
  }
}

// y[r .. r + N - 1, o .. o + 3] from output rows o.. as float values (w: rows stride apart): each
// load of w serves N input rows and each load of x four output rows.
template <int N>
inline void dots(const Layer& l, const float* w, int64_t stride, int64_t r, int64_t o, int valid) {
  f32x8 acc[4][N] = {};
  for (int64_t i = 0; i < l.in; i += LANES) {
    f32x8 weights[4];
    for (int k = 0; k < 4; ++k) weights[k] = load(w + k * stride + i);
    for (int n = 0; n < N; ++n) {
      const f32x8 x = load(l.x + (r + n) * l.in + i);
      for (int k = 0; k < 4; ++k) acc[k][n] += x * weights[k];
    }
  }
  for (int k = 0; k < valid; ++k)
    for (int n = 0; n < N; ++n) l.y[(r + n) * l.out + o + k] = total(acc[k][n]);
}

// y for input rows [r, r + V * LANES) and output rows o + [0, valid), from M decoded weight rows
// (stride apart): V vectors of x^T's column k times each row's weight k, in V * M independent sums.
template <int V, int M>
inline void tile(const Layer& l, const float* w, int64_t stride, int64_t r, int64_t o, int valid) {
  f32x8 acc[V][M] = {};
  const float* xt = l.xt + r;
  for (int64_t k = 0; k < l.in; ++k, xt += l.padded_rows) {
    f32x8 x[V];
    for (int v = 0; v < V; ++v) x[v] = load(xt + v * LANES);
    for (int m = 0; m < M; ++m) {
      const f32x8 weight = splat(w[m * stride + k]);
      for (int v = 0; v < V; ++v) acc[v][m] += x[v] * weight;
    }
  }
  for (int v = 0; v < V; ++v)
    for (int i = 0; i < LANES && r + v * LANES + i < l.rows; ++i)
      for (int m = 0; m < valid; ++m) l.y[(r + v * LANES + i) * l.out + o + m] = acc[v][m][i];
}

// Output rows [begin, end): one input row takes the integer product; more decode W_ROWS weight rows
// at a time, then multiply them four at a time by input rows in pairs (dots), or by 16 input rows
// at a time (two tiles of half the weight rows) and a last 8 (one tile of them all): eight to twelve
// sums in flight hide the FMAs' latency.
inline void run_rows(const Layer& l, int64_t begin, int64_t end) {
  if (l.rows == 1) {
    const auto row = row_product(l);
    for (int64_t o = begin; o < end; ++o) l.y[o] = row(l, o);
    return;
  }
  constexpr int HALF = W_ROWS / 2;
  const int64_t stride = l.in + W_ROW_PADDING;
  std::vector<float> w(W_ROWS * stride);
  for (int64_t o = begin; o < end; o += W_ROWS) {
    const int valid = int(std::min<int64_t>(W_ROWS, end - o));
    for (int k = 0; k < valid; ++k) decode_row(l, o + k, w.data() + k * stride);
    if (l.rows < TILE_ROWS) {
      for (int k = 0; k < valid; k += 4) {
        const float* four = w.data() + k * stride;
        int64_t r = 0;
        for (; r + 2 <= l.rows; r += 2) dots<2>(l, four, stride, r, o + k, std::min(4, valid - k));
        if (r < l.rows) dots<1>(l, four, stride, r, o + k, std::min(4, valid - k));
      }
      continue;
    }
    int64_t r = 0;
    for (; r + 2 * LANES <= l.padded_rows; r += 2 * LANES) {
      tile<2, HALF>(l, w.data(), stride, r, o, std::min(valid, HALF));
      if (valid > HALF) tile<2, HALF>(l, w.data() + HALF * stride, stride, r, o + HALF, valid - HALF);
    }
    if (r < l.padded_rows) tile<1, W_ROWS>(l, w.data(), stride, r, o, valid);
  }
}

// One input row rounded to int16 in blocks of X_BLOCK columns: scale = max |x| / X_LEVELS, code =
// rint(x * (X_LEVELS / max |x|)) in float32 (an all-zero block: scale 0, codes 0; a block holding
// inf or nan: scale nan, so that its outputs are nan). For int4, each full NIBBLE_STEP's codes are
// reordered for nibble_products and each of its lanes gets its block's scale.
struct RoundedRow {
  std::vector<int16_t> codes;
  std::vector<float> scales, lane_scales;
};

// Eight lanes at a time (in is a multiple of GROUP_MULTIPLE, so every block is too): with scalar
// loops an 8-row, 1024-wide layer's call took 4 us instead of 2.
inline RoundedRow round_row(const float* x, int64_t in, int bits) {
  std::vector<int16_t> natural(in);
  std::vector<float> scales((in + X_BLOCK - 1) / X_BLOCK);
  for (int64_t b = 0; b * X_BLOCK < in; ++b) {
    const int64_t begin = b * X_BLOCK, end = std::min(begin + X_BLOCK, in);
    f32x8 largest_lanes = {};
    i32x8 not_finite = {};
    for (int64_t c = begin; c < end; c += LANES) {
      const f32x8 v = load(x + c), magnitude = f32x8(i32x8(v) & 0x7fffffff);
      largest_lanes = largest_lanes > magnitude ? largest_lanes : magnitude;
      not_finite |= (v - v) != 0;  // inf - inf and nan - nan are nan
    }
    float largest = 0;
    bool finite = true;
    for (int k = 0; k < LANES; ++k) largest = std::max(largest, largest_lanes[k]), finite = finite && !not_finite[k];
    const f32x8 step = splat(X_LEVELS / largest);
    for (int64_t c = begin; c < end; c += LANES) {
      const i32x8 codes = finite && largest > 0 ? nearest(load(x + c) * step) : i32x8{};
      const i16x8 words = __builtin_convertvector(codes, i16x8);
      std::memcpy(natural.data() + c, &words, sizeof words);
    }
    scales[b] = finite ? largest / X_LEVELS : std::numeric_limits<float>::quiet_NaN();
  }
  if (bits == 8) return RoundedRow{std::move(natural), std::move(scales), {}};
  const int64_t steps = in / NIBBLE_STEP;
  RoundedRow r{natural, std::move(scales), std::vector<float>(steps * NIBBLE_STEP / LANES)};
  for (int64_t step = 0; step < steps * NIBBLE_STEP; step += NIBBLE_STEP)  // column 4i + k to k * 16 + i
    for (int k = 0; k < 4; ++k)
      for (int i = 0; i < 16; ++i) r.codes[step + k * 16 + i] = natural[step + 4 * i + k];
  for (int64_t lane = 0; lane < int64_t(r.lane_scales.size()); ++lane) r.lane_scales[lane] = r.scales[lane * LANES / X_BLOCK];
  return r;
}

// Why these shapes do not describe one layer the kernel takes (nullptr: they do).
inline const char* shape_error(int bits, int64_t in, int64_t code_columns, int64_t out, int64_t scale_rows,
                               int64_t groups, int64_t offset_count) {
  if (code_columns != (bits == 8 ? in : in / 2) || scale_rows != out || groups <= 0 || in % groups)
    return "quantized_matmul: codes, scales and x do not describe one layer";
  if ((in / groups) % GROUP_MULTIPLE || (bits == 4 && in / groups != 16 && in / groups != 32 && (in / groups) % 64))
    return "quantized_matmul: groups must span a multiple of 16 columns (int4: 16, 32 or a multiple of 64)";
  if (offset_count != 0 && offset_count != out * groups)
    return "quantized_matmul: offsets must be empty or shaped like scales";
  return nullptr;
}

// One of the layers that a call multiplies by the same x (q, k and v; gate and up): its codes,
// scales and offsets (null for a symmetric layer) as Layer has them, and its y (rows, out).
struct Segment {
  const uint8_t* codes;
  const float* scales;
  const float* offsets;
  float* y;
  int64_t out;
};

// y = x W^T for each of `count` layers whose shapes passed shape_error, all of the same code width
// and groups: x is rounded (one row) and its group sums taken once for them all. Each layer's
// output rows go in tasks of TASK_BYTES of codes, claimed from a shared counter by every thread that
// runs task(): on_threads(helpers, task) runs it on the calling thread and on up to `helpers` others
// (returning before they finish, or not). The caller then waits only for tasks already claimed, so
// a helper that starts late (its thread busy elsewhere) finds nothing left and holds nothing up.
template <typename OnThreads>
void quantized_matmul(int bits, const float* x, const Segment* segments, int64_t count, int64_t rows, int64_t in,
                      int64_t groups, int64_t helpers, OnThreads&& on_threads) {
  struct Work {
    std::vector<Layer> layers;
    std::vector<int64_t> first_task;  // of each layer, then the total
    int64_t rows_per_task;
    std::atomic<int64_t> next{0}, done{0};
    void drain() {
      for (int64_t t; (t = next.fetch_add(1)) < first_task.back(); done.fetch_add(1)) {
        const int64_t layer = std::upper_bound(first_task.begin(), first_task.end(), t) - first_task.begin() - 1;
        const int64_t begin = (t - first_task[layer]) * rows_per_task;
        run_rows(layers[layer], begin, std::min(begin + rows_per_task, layers[layer].out));
      }
    }
  };
  // Per input row: the sum of each group's columns; several rows are also laid out as Layer says
  // (int4's columns in decode_row's order), one row is rounded (round_row).
  const int64_t group_size = in / groups;
  const int64_t padded_rows = rows >= TILE_ROWS ? (rows + LANES - 1) / LANES * LANES : 0;
  std::vector<float> split(bits == 4 && rows > 1 && !padded_rows ? rows * in : 0), xt(padded_rows * in);
  std::vector<float> sums(rows * groups);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * in;
    for (int64_t g = 0; g < groups; ++g) {
      f32x8 sum = {};
      for (int64_t i = g * group_size; i < (g + 1) * group_size; i += LANES) sum += load(row + i);
      sums[r * groups + g] = total(sum);
    }
    for (int64_t c = 0; c < in && (padded_rows || !split.empty()); ++c) {
      const int64_t column = bits == 4 ? (c % 2) * (in / 2) + c / 2 : c;
      (padded_rows ? xt[column * padded_rows + r] : split[r * in + column]) = row[c];
    }
  }
  RoundedRow rounded;
  if (rows == 1) rounded = round_row(x, in, bits);
  auto work = std::make_shared<Work>();
  work->rows_per_task = std::max<int64_t>(1, TASK_BYTES / (bits == 8 ? in : in / 2));
  work->first_task.push_back(0);
  for (const Segment* s = segments; s < segments + count; ++s) {
    work->layers.push_back(Layer{split.empty() ? x : split.data(), xt.data(), s->codes, s->scales, s->offsets,
                                 sums.data(), s->y, bits, rows, padded_rows, in, s->out, groups, group_size,
                                 rounded.codes.data(), rounded.scales.data(), rounded.lane_scales.data()});
    work->first_task.push_back(work->first_task.back() + (s->out + work->rows_per_task - 1) / work->rows_per_task);
  }
  const int64_t tasks = work->first_task.back();
  on_threads(std::max<int64_t>(0, std::min(helpers, tasks - 1)), [work] { work->drain(); });
  while (work->done.load(std::memory_order_acquire) < tasks) std::this_thread::yield();
}

}  // namespace llama_twin

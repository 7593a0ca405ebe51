// The two halves of a CPU decode step that XLA:CPU ran slowly, as XLA FFI custom calls (built by
// archscale/arch/cpu_kernels.py): attention over the cache, and the few-row weight matmuls.
//
// Attention: one query position per sequence attends to the first `valid` cached keys of its KV head:
//   q: B x K x G x H (G query heads share each of the K KV heads), k, v: B x K x S x H (the
//   cache, S slots of which the first `valid` are filled), out: B x K x G x H, fp32 throughout.
// Why not XLA: XLA:CPU runs these attention matmuls as one tiny matrix-vector product per
// (batch row, KV head), each with its own thread-pool round trip, so decode spent most of its
// attention time on overhead (about 13 GB/s against a 19 GB/s read roofline for d_model 512).
// Here each (row, head)'s keys and values are streamed from memory once and only the `valid`
// slots are read (its G query heads re-read them from L2); contiguous runs of heads are split
// over XLA's intra-op threads.
// Matmuls: see PanelMatmul below.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using Tensor4 = ffi::Buffer<ffi::F32, 4>;  // aliases: a comma inside a macro argument splits it
using Scalar = ffi::Buffer<ffi::S32, 0>;
using Matrix = ffi::Buffer<ffi::F32, 2>;
using Tensor3 = ffi::Buffer<ffi::F32, 3>;

namespace {

// exp(x) for x <= 0 (softmax after subtracting the maximum) in straight-line code that the
// compiler vectorizes: x = n ln2 + r with |r| <= ln2 / 2, exp(r) from Cephes' expf polynomial
// (relative error ~1e-7), 2^n written into the exponent bits. Below -87 it flushes to ~1e-38.
inline float ExpNonPositive(float x) {
  x = std::max(x, -87.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}

inline float Dot(const float* a, const float* b, int64_t n) {
  float acc = 0.0f;
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

#ifdef __AVX2__
// Software prefetch of the rows kPrefetchRows ahead: one core's hardware prefetcher alone kept
// too few cache misses in flight (a single thread read the cache at 8.9 GB/s, 11.6 with this).
// Prefetching past the end of the buffer is harmless: prefetches never fault.
constexpr int64_t kPrefetchRows = 8;

inline void Prefetch(const float* from, int64_t floats) {
  const char* bytes = reinterpret_cast<const char*>(from);
  for (int64_t b = 0; b < floats * 4; b += 64) _mm_prefetch(bytes + b, _MM_HINT_T0);
}

// out[j] = scale * <q, k_j> for the 8 key rows k_j = k + j H (H a multiple of 8).
inline void ScaledDots8(const float* q, const float* k, int64_t H, float scale, float* out) {
  __m256 acc[8];
  for (auto& a : acc) a = _mm256_setzero_ps();
  for (int64_t h = 0; h < H; h += 8) {
    const __m256 q8 = _mm256_loadu_ps(q + h);
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(q8, _mm256_loadu_ps(k + j * H + h), acc[j]);
  }
  // Eight horizontal sums at once: pairwise hadd twice, then add the two 128-bit halves.
  const __m256 t0 = _mm256_hadd_ps(acc[0], acc[1]), t1 = _mm256_hadd_ps(acc[2], acc[3]);
  const __m256 t2 = _mm256_hadd_ps(acc[4], acc[5]), t3 = _mm256_hadd_ps(acc[6], acc[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  const __m256 sums = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                                    _mm256_permute2f128_ps(u0, u1, 0x31));
  _mm256_storeu_ps(out, _mm256_mul_ps(sums, _mm256_set1_ps(scale)));
}

// ExpNonPositive on 8 lanes.
inline __m256 ExpNonPositive8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_floor_ps(
      _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i bits = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

// out = scale * sum_s p[s] v_s over L rows of v (H a multiple of 8), 64 columns per pass held
// in registers so the accumulator is never reloaded.
inline void WeightedRowSum(const float* p, const float* v, int64_t H, int64_t L, float scale,
                           float* out) {
  for (int64_t h0 = 0; h0 < H; h0 += 64) {
    const int chunks = static_cast<int>(std::min<int64_t>(64, H - h0) / 8);
    __m256 acc[8];
    for (auto& a : acc) a = _mm256_setzero_ps();
    for (int64_t s = 0; s < L; ++s) {
      if (h0 == 0) Prefetch(v + (s + kPrefetchRows) * H, H);
      const __m256 p_s = _mm256_broadcast_ss(p + s);
      const float* v_s = v + s * H + h0;
      for (int j = 0; j < chunks; ++j) acc[j] = _mm256_fmadd_ps(p_s, _mm256_loadu_ps(v_s + 8 * j), acc[j]);
    }
    for (int j = 0; j < chunks; ++j)
      _mm256_storeu_ps(out + h0 + 8 * j, _mm256_mul_ps(acc[j], _mm256_set1_ps(scale)));
  }
}
#endif

// Softmax attention of the G query heads q (G x H) sharing one KV head (k, v: rows of H, the
// first L valid). scores holds G x L floats of scratch.
void AttendOneKvHead(const float* q, const float* k, const float* v, float* out, int64_t G,
                     int64_t H, int64_t L, float* scores) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(H));
  for (int64_t g = 0; g < G; ++g) {
    const float* q_g = q + g * H;
    float* row = scores + g * L;
    int64_t s = 0;
#ifdef __AVX2__
    if (H % 8 == 0) {
      for (; s + 8 <= L; s += 8) {
        Prefetch(k + (s + kPrefetchRows) * H, 8 * H);
        ScaledDots8(q_g, k + s * H, H, scale, row + s);
      }
    }
#endif
    for (; s < L; ++s) row[s] = scale * Dot(q_g, k + s * H, H);

    const float peak = *std::max_element(row, row + L);
    float total = 0.0f;
    int64_t i = 0;
#ifdef __AVX2__
    __m256 total8 = _mm256_setzero_ps();
    for (; i + 8 <= L; i += 8) {
      const __m256 e = ExpNonPositive8(_mm256_sub_ps(_mm256_loadu_ps(row + i), _mm256_set1_ps(peak)));
      _mm256_storeu_ps(row + i, e);
      total8 = _mm256_add_ps(total8, e);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, total8);
    for (float lane : lanes) total += lane;
#endif
    for (; i < L; ++i) {
      row[i] = ExpNonPositive(row[i] - peak);
      total += row[i];
    }
    const float inv_total = 1.0f / total;
    float* o_g = out + g * H;
#ifdef __AVX2__
    if (H % 8 == 0) {
      WeightedRowSum(row, v, H, L, inv_total, o_g);
      continue;
    }
#endif
    std::fill(o_g, o_g + H, 0.0f);
    for (int64_t t = 0; t < L; ++t) {
      const float p = row[t];
      const float* v_t = v + t * H;
      for (int64_t h = 0; h < H; ++h) o_g[h] += p * v_t[h];
    }
    for (int64_t h = 0; h < H; ++h) o_g[h] *= inv_total;
  }
}

// Parts per thread: a woken helper thread often starts late (tens of microseconds in a VM); with
// one part per thread the calling thread had claimed both before it started.
constexpr int64_t kPartsPerThread = 8;
// Work per part at least: about 60-100 us of one core's time. Every split call risks a stall
// (a helper woken late, or descheduled while it holds a part), so small calls run on the calling
// thread: a d_model 64 model's matmul is ~1 us, and splitting everything over the pool made its
// decode calls 1.5-4x slower at the median; at d_model 256, batch 8, parts of 1 MFLOP / 256 KB
// left single decode calls spread so widely (GQA p10-p90 68-108 ms) that the GQA/MHA ratio of
// two interleaved measurements differed by up to 8%, against 1-2% with these.
constexpr int64_t kMinFlopsPerPart = 4 << 20;
constexpr int64_t kMinBytesPerPart = 1 << 20;

// Parts of one call, claimed by whichever thread is free; shared with the scheduled tasks,
// which may start after the call has returned (they then find nothing left to claim).
struct Parts {
  std::function<void(int64_t)> run_part;
  int64_t count;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void Run() {
    for (int64_t part; (part = next.fetch_add(1)) < count;) {
      run_part(part);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

// run_part(p) for p in [0, parts), on the calling thread and XLA's intra-op threads; returns
// when every part is done.
void ParallelFor(ffi::ThreadPool& pool, int64_t parts, std::function<void(int64_t)> run_part) {
  if (parts == 1) {
    run_part(0);
    return;
  }
  auto work = std::make_shared<Parts>();
  work->run_part = std::move(run_part);
  work->count = parts;
  // Each helper claims parts until none are left, so one per pool thread is enough.
  const int64_t helpers = std::min<int64_t>(parts - 1, pool.num_threads());
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work] { work->Run(); });
  work->Run();
  // Every part is claimed by now; wait for the ones other threads are still running.
  while (work->done.load(std::memory_order_acquire) < parts) std::this_thread::yield();
}

// Parts for `items` independent items costing `work` in all, at least `min_work` per part.
int64_t PartsFor(ffi::ThreadPool& pool, int64_t items, int64_t work, int64_t min_work) {
  const int64_t most = std::max<int64_t>(pool.num_threads(), 1) * kPartsPerThread;
  return std::max<int64_t>(1, std::min({most, items, work / min_work}));
}

ffi::Error DecodeAttention(ffi::ThreadPool pool, Tensor4 q, Tensor4 k, Tensor4 v, Scalar valid,
                           ffi::Result<Tensor4> out) {
  const auto q_dims = q.dimensions();
  const auto kv_dims = k.dimensions();
  const int64_t L = valid.typed_data()[0];
  if (L < 1 || L > kv_dims[2]) {
    return ffi::Error::InvalidArgument("decode attention: the valid length is outside the cache");
  }
  const float *q_data = q.typed_data(), *k_data = k.typed_data(), *v_data = v.typed_data();
  float* out_data = out->typed_data();
  const int64_t kv_heads = q_dims[0] * q_dims[1], G = q_dims[2], H = q_dims[3], S = kv_dims[2];
  const int64_t parts = PartsFor(pool, kv_heads, 2 * kv_heads * L * H * 4, kMinBytesPerPart);
  ParallelFor(pool, parts, [=](int64_t part) {
    std::vector<float> scores(G * L);
    for (int64_t i = part * kv_heads / parts; i < (part + 1) * kv_heads / parts; ++i) {
      AttendOneKvHead(q_data + i * G * H, k_data + i * S * H, v_data + i * S * H,
                      out_data + i * G * H, G, H, L, scores.data());
    }
  });
  return ffi::Error::Success();
}

// ---- few-row matmul -----------------------------------------------------------------------
// out (M x N) = x (M x K) @ W for the M rows of a decode step (M = batch), W packed once per
// model into P = N / 16 panels of K x 16 (``cpu_kernels.pack_panels``). Why not XLA: Eigen's
// GEMM ran these at 50-75 GFLOP/s with the weights cold in memory, as every decode step has
// them; a panel is read from memory once and reused from L1/L2 by every tile of rows.
typedef float Vec8 __attribute__((vector_size(32), aligned(4)));  // unaligned 8-float loads

// Rows [0, R) of x against one panel: R x 16 accumulators in registers over the whole K.
template <int R>
void PanelTile(const float* x, int64_t K, const float* panel, float* out, int64_t N) {
  Vec8 low[R], high[R];
  for (int r = 0; r < R; ++r) low[r] = high[r] = Vec8{};
  for (int64_t k = 0; k < K; ++k) {
    const Vec8 w_low = *reinterpret_cast<const Vec8*>(panel + k * 16);
    const Vec8 w_high = *reinterpret_cast<const Vec8*>(panel + k * 16 + 8);
    __builtin_prefetch(panel + (k + 16) * 16);  // past the panel's end: harmless, never faults
    for (int r = 0; r < R; ++r) {
      const float x_rk = x[r * K + k];
      low[r] += x_rk * w_low;
      high[r] += x_rk * w_high;
    }
  }
  for (int r = 0; r < R; ++r) {
    *reinterpret_cast<Vec8*>(out + r * N) = low[r];
    *reinterpret_cast<Vec8*>(out + r * N + 8) = high[r];
  }
}

// Every row of x against one panel, in tiles of 6 rows: 12 accumulators, 2 weight vectors and
// a broadcast fill 15 of AVX2's 16 vector registers.
void PanelRows(const float* x, int64_t M, int64_t K, const float* panel, float* out, int64_t N) {
  int64_t m = 0;
  for (; m + 6 <= M; m += 6) PanelTile<6>(x + m * K, K, panel, out + m * N, N);
  x += m * K;
  out += m * N;
  switch (M - m) {
    case 5: PanelTile<5>(x, K, panel, out, N); break;
    case 4: PanelTile<4>(x, K, panel, out, N); break;
    case 3: PanelTile<3>(x, K, panel, out, N); break;
    case 2: PanelTile<2>(x, K, panel, out, N); break;
    case 1: PanelTile<1>(x, K, panel, out, N); break;
    default: break;
  }
}

ffi::Error PanelMatmul(ffi::ThreadPool pool, Matrix x, Tensor3 panels, ffi::Result<Matrix> out) {
  const int64_t M = x.dimensions()[0], K = x.dimensions()[1], P = panels.dimensions()[0];
  if (panels.dimensions()[1] != K || panels.dimensions()[2] != 16) {
    return ffi::Error::InvalidArgument("panel matmul: panels must be P x K x 16");
  }
  const float *x_data = x.typed_data(), *panel_data = panels.typed_data();
  float* out_data = out->typed_data();
  const int64_t parts = PartsFor(pool, P, 2 * M * K * P * 16, kMinFlopsPerPart);
  ParallelFor(pool, parts, [=](int64_t part) {
    for (int64_t p = part * P / parts; p < (part + 1) * P / parts; ++p) {
      PanelRows(x_data, M, K, panel_data + p * K * 16, out_data + p * 16, P * 16);
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ArchscaleDecodeAttention, DecodeAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Tensor4>()
                                  .Arg<Tensor4>()
                                  .Arg<Tensor4>()
                                  .Arg<Scalar>()
                                  .Ret<Tensor4>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(ArchscalePanelMatmul, PanelMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Matrix>()
                                  .Arg<Tensor3>()
                                  .Ret<Matrix>());

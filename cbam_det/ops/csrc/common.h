// Shared pieces of cbam_det's C++ CPU kernels (each op family's .cpp in this folder includes it):
// float vectors of kLanes lanes (GCC/Clang vector extension), lane sums flushed into doubles,
// the folded BatchNorm's affine x = a[c]·z + b[c], the input checks, a vectorisable sigmoid.
// Compiled with -ffp-contract=off so that x and x·g_c are recomputed bit-identically in every
// kernel (the max-pool tie masks compare them exactly).
#pragma once
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace {


using OptT = c10::optional<at::Tensor>;
constexpr int64_t kLanes = 16;    // independent accumulators: lets the compiler vectorise
constexpr int64_t kChunk = 1024;  // float lanes are flushed into a double every chunk
constexpr int64_t kBlock = 256;   // pixels per task in reductions over channels
constexpr int64_t kAhead = 2;     // channels read ahead (prefetched) in those reductions

// kLanes floats as one value (GCC/Clang vector extension): element-wise arithmetic, compares
// and selects compile to SIMD instructions whatever the auto-vectoriser decides
typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
inline vf splat(float s) { return vf{} + s; }
inline double hsum(vf v) {  // lane by lane in lane order, in double
  double t = 0;
  for (int64_t l = 0; l < kLanes; ++l) t += v[l];
  return t;
}

inline const float* ptr_or_null(const OptT& t) { return t.has_value() && t->defined() ? t->data_ptr<float>() : nullptr; }

struct Affine {
  const float* a;
  const float* b;
  inline void get(int64_t c, float& sa, float& sb) const {
    if (a) { sa = a[c]; sb = b[c]; } else { sa = 1.f; sb = 0.f; }
  }
};

// x from z: a[c]·z + b[c] with a BatchNorm folded in (kA), z itself otherwise
template <bool kA>
inline float xv(float z, float sa, float sb) {
  if constexpr (kA) return sa * z + sb;
  else return z;
}

// calls f(std::true_type) when the affine is present, f(std::false_type) otherwise
template <typename F>
void dispatch_affine(const Affine& af, F&& f) {
  if (af.a) f(std::true_type{});
  else f(std::false_type{});
}

// f(tag, r, sa, sb) for every (n, c) row r in parallel, with the row's affine (sa, sb) and a
// tag whose ::value says whether the affine is present (use it as xv<decltype(tag)::value>)
template <typename F>
void for_rows(const Affine& af, int64_t rows, int64_t C, F&& f) {
  dispatch_affine(af, [&](auto tag) {
    at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        float sa, sb;
        af.get(r % C, sa, sb);
        f(tag, r, sa, sb);
      }
    });
  });
}

// Σ_{i<n} term(i): kLanes float accumulators (vectorisable), flushed into a double every kChunk
template <typename F>
inline double lane_sum(int64_t n, F&& term) {
  double total = 0;
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t i1 = std::min(n, i0 + kChunk);
    float acc[kLanes] = {0};
    int64_t i = i0;
    for (; i + kLanes <= i1; i += kLanes)
      for (int64_t l = 0; l < kLanes; ++l) acc[l] += term(i + l);
    for (; i < i1; ++i) acc[0] += term(i);
    for (int64_t l = 0; l < kLanes; ++l) total += acc[l];
  }
  return total;
}

// out[n, c] = Σ_blk part[(n·nb + blk)·C + c]: per-(n, c) totals of per-pixel-block partial sums
inline void sum_parts(const std::vector<double>& part, int64_t N, int64_t nb, int64_t C, float* out) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      double total = 0;
      for (int64_t blk = 0; blk < nb; ++blk) total += part[(n * nb + blk) * C + c];
      out[n * C + c] = static_cast<float>(total);
    }
}

// Loops over channels read kBlock pixels of each channel row, one page apart: the hardware
// prefetcher does not follow, so the rows kAhead channels ahead are requested explicitly.
inline void prefetch_ahead(const float* row, int64_t c, int64_t C, int64_t HW, int64_t w) {
  if (c + kAhead < C)
    for (int64_t j = 0; j < w; j += 16) __builtin_prefetch(row + kAhead * HW + j);
}

inline void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              name, ": expected a contiguous float32 CPU tensor");
}

inline Affine affine(const OptT& a, const OptT& b, int64_t C) {
  TORCH_CHECK(a.has_value() == b.has_value(), "a and b must be given together");
  if (a.has_value()) {
    check(*a, "a"); check(*b, "b");
    TORCH_CHECK(a->numel() == C && b->numel() == C, "a and b must have C elements");
  }
  return {ptr_or_null(a), ptr_or_null(b)};
}

// sum (double) and max of x over one row of n values
template <bool kA>
void row_sum_max(const float* z, int64_t n, float sa, float sb, double& sum, float& mx) {
  const vf va = splat(sa), vb = splat(sb);
  vf m = splat(-std::numeric_limits<float>::infinity());
  double total = 0;
  float tail_max = -std::numeric_limits<float>::infinity();
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t i1 = std::min(n, i0 + kChunk);
    vf acc = {};
    int64_t i = i0;
    for (; i + kLanes <= i1; i += kLanes) {
      const vf v = kA ? va * load(z + i) + vb : load(z + i);
      acc += v;
      m = v > m ? v : m;
    }
    for (; i < i1; ++i) {
      const float v = xv<kA>(z[i], sa, sb);
      acc[0] += v;
      tail_max = v > tail_max ? v : tail_max;
    }
    total += hsum(acc);
  }
  for (int64_t j = 0; j < kLanes; ++j) tail_max = m[j] > tail_max ? m[j] : tail_max;
  sum = total;
  mx = tail_max;
}

// number of x == value in one row (vector lanes of counts)
template <bool kA>
float count_equal(const float* __restrict p, int64_t n, float sa, float sb, float value) {
  const vf va = splat(sa), vb = splat(sb), vv = splat(value), one = splat(1.f), zero = {};
  vf acc = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) acc += (kA ? va * load(p + i) + vb : load(p + i)) == vv ? one : zero;
  float total = static_cast<float>(hsum(acc));  // counts: exact in float up to 2^24
  for (; i < n; ++i) total += xv<kA>(p[i], sa, sb) == value ? 1.f : 0.f;
  return total;
}

// one element (T = float) or kLanes elements (T = vf) of input_grad's dx
template <bool kA, bool kSpatial, typename T>
inline T dx_value(T z, T dy, T s, T m, T wa, T wm, T sa, T sb, T g, T base, T cm, T cmg, T zero) {
  const T x = kA ? sa * z + sb : z;
  T v = (dy * s) * g + base + (x == cm ? cmg : zero);
  if (kSpatial) v += g * (wa + (x * g == m ? wm : zero));
  return v;
}

// one row of input_grad: dx, and with kSums also Σdx and Σdx·z (lanes, flushed to double)
template <bool kA, bool kGs, bool kSpatial, bool kSums>
void dx_row(float* __restrict o, const float* __restrict p, const float* __restrict q, const float* __restrict s,
            const float* __restrict m, const float* __restrict wa, const float* __restrict wm, int64_t n, float sa,
            float sb, float g, float base, float cm, float cmg, double& sum1, double& sum2) {
  const vf va = splat(sa), vb = splat(sb), vg = splat(g), vbase = splat(base), vcm = splat(cm), vcmg = splat(cmg),
           one = splat(1.f), zero = {};
  double t1 = 0, t2 = 0;
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t i1 = std::min(n, i0 + kChunk);
    vf a1 = {}, a2 = {};
    int64_t i = i0;
    for (; i + kLanes <= i1; i += kLanes) {
      const vf z = load(p + i);
      const vf v = dx_value<kA, kSpatial>(z, load(q + i), kGs ? load(s + i) : one, kSpatial ? load(m + i) : zero,
                                          kSpatial ? load(wa + i) : zero, kSpatial ? load(wm + i) : zero, va, vb, vg,
                                          vbase, vcm, vcmg, zero);
      store(o + i, v);
      if (kSums) {
        a1 += v;
        a2 += v * z;
      }
    }
    for (; i < i1; ++i) {
      const float v = dx_value<kA, kSpatial>(p[i], q[i], kGs ? s[i] : 1.f, kSpatial ? m[i] : 0.f,
                                             kSpatial ? wa[i] : 0.f, kSpatial ? wm[i] : 0.f, sa, sb, g, base, cm,
                                             cmg, 0.f);
      o[i] = v;
      if (kSums) {
        a1[0] += v;
        a2[0] += v * p[i];
      }
    }
    if (kSums) {
      t1 += hsum(a1);
      t2 += hsum(a2);
    }
  }
  sum1 = t1;
  sum2 = t2;
}

// e^v for v ≤ 0 (BAM's sigmoids use e^{-|t|}): Cephes' expf polynomial, written so that it
// vectorises (relative error ≈ 2e-7); underflows to 0 below -87.
inline float exp_neg(float v) {
  v = std::max(v, -87.f);
  const float n = std::nearbyint(v * 1.44269504088896341f);
  float r = v - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// σ(t) without overflow: e^{-|t|} / (1 + e^{-|t|}) mirrored for t ≥ 0
inline float sigmoid(float t) {
  const float e = exp_neg(-std::fabs(t)), q = 1.f / (1.f + e);
  return t >= 0.f ? q : e * q;
}

// BAM's M = σ(c + s) (kProduct: σ(c·s))
template <bool kProduct>
inline float bam_logit(float c, float s) { return kProduct ? c * s : c + s; }

}  // namespace

// ---- for the op families' eager autograd nodes (torch::autograd::Function in cbam_det::, so that a
// node's name reads torch::autograd::CppNode<cbam_det::...>)
namespace cbam_det {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

inline c10::IValue or_none(const at::Tensor& t) { return t.defined() ? c10::IValue(t) : c10::IValue(); }
inline c10::IValue or_none(const c10::optional<at::Tensor>& t) { return t.has_value() ? c10::IValue(*t) : c10::IValue(); }
inline at::Tensor value_or_undefined(const c10::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }
inline at::Tensor tensor_or_undefined(const c10::IValue& v) { return v.isNone() ? at::Tensor() : v.toTensor(); }

// the registered op `name` (``cbam_det::...``), looked up once by the caller
inline c10::OperatorHandle op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

// calls `op` boxed, below the autograd key: its kernels (C++, or the Python ones of the op's file) run,
// nothing is recorded for autograd
inline void call_below_autograd(const c10::OperatorHandle& op, torch::jit::Stack& stack) {
  at::AutoDispatchBelowAutograd below;
  op.callBoxed(&stack);
}

}  // namespace cbam_det

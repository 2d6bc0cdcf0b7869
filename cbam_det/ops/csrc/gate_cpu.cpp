// Fused CPU kernels for gated attention: CBAM (Woo et al., ECCV 2018, eq. 1-3), SE, and
// BAM's gate (Park et al., BMVC 2018, eq. 1-2: y = x ⊗ (1 + σ(Mc + Ms))).
//
// Every full-size (N, C, H, W) step of  y = x ⊗ g_c ⊗ g_s  and of its backward is one pass
// over memory with no temporaries, where  x = a[c]·z + b[c]  is either the input itself
// (a, b absent) or a BatchNorm's output computed on the fly from its input z (the fused
// BatchNorm + attention block). The small steps stay in PyTorch (ATen calls from here in
// gated_infer, the one-call inference), except the spatial gate's k×k conv with one output
// channel (spatial_conv*). BAM's 1×1 reduction conv has its own kernels too (pointwise_conv*).
// Inputs: float32, contiguous NCHW, CPU. Max-pool gradients are shared evenly between
// tied maxima, as torch's amax does. Compiled with -ffp-contract=off so that x and x·g_c
// are recomputed bit-identically in every kernel (the max masks compare them exactly).
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

const float* ptr_or_null(const OptT& t) { return t.has_value() && t->defined() ? t->data_ptr<float>() : nullptr; }

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
void sum_parts(const std::vector<double>& part, int64_t N, int64_t nb, int64_t C, float* out) {
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

void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              name, ": expected a contiguous float32 CPU tensor");
}

Affine affine(const OptT& a, const OptT& b, int64_t C) {
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

// (mean, max) over H×W of x: two (N, C) tensors.
std::vector<at::Tensor> channel_pool(const at::Tensor& z, const OptT& a, const OptT& b) {
  check(z, "z");
  const int64_t N = z.size(0), C = z.size(1), HW = z.size(2) * z.size(3);
  const Affine af = affine(a, b, C);
  auto avg = at::empty({N, C}, z.options()), mx = at::empty({N, C}, z.options());
  const float* zp = z.data_ptr<float>();
  float *ap = avg.data_ptr<float>(), *mp = mx.data_ptr<float>();
  for_rows(af, N * C, C, [&](auto tag, int64_t r, float sa, float sb) {
    double s;
    row_sum_max<decltype(tag)::value>(zp + r * HW, HW, sa, sb, s, mp[r]);
    ap[r] = static_cast<float>(s / HW);
  });
  return {avg, mx};
}

// Per (n, c) row of z: Σ(z − k[c]) and Σ(z − k[c])² (float64; the shift k keeps the variance
// accurate when |mean| ≫ std), max z and min z. A BatchNorm's batch statistics and, since
// z ↦ a·z + b is monotone, the exact channel max of x = a·z + b, all in one pass.
std::vector<at::Tensor> channel_moments(const at::Tensor& z, const at::Tensor& shift) {
  check(z, "z"); check(shift, "shift");
  const int64_t N = z.size(0), C = z.size(1), HW = z.size(2) * z.size(3);
  TORCH_CHECK(shift.numel() == C, "shift must have C elements");
  auto s1 = at::empty({N, C}, z.options().dtype(at::kDouble)), s2 = at::empty({N, C}, s1.options());
  auto mx = at::empty({N, C}, z.options()), mn = at::empty({N, C}, z.options());
  const float *zp = z.data_ptr<float>(), *kp = shift.data_ptr<float>();
  double *s1p = s1.data_ptr<double>(), *s2p = s2.data_ptr<double>();
  float *mxp = mx.data_ptr<float>(), *mnp = mn.data_ptr<float>();
  at::parallel_for(0, N * C, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float k = kp[r % C];
      const float* p = zp + r * HW;
      const vf vk = splat(k);
      vf hi = splat(-std::numeric_limits<float>::infinity()), lo = splat(std::numeric_limits<float>::infinity());
      double t1 = 0, t2 = 0;
      for (int64_t i0 = 0; i0 < HW; i0 += kChunk) {
        const int64_t i1 = std::min(HW, i0 + kChunk);
        vf a1 = {}, a2 = {};
        int64_t i = i0;
        for (; i + kLanes <= i1; i += kLanes) {
          const vf v = load(p + i), d = v - vk;
          a1 += d;
          a2 += d * d;
          hi = v > hi ? v : hi;
          lo = v < lo ? v : lo;
        }
        for (; i < i1; ++i) {
          const float v = p[i], d = v - k;
          a1[0] += d;
          a2[0] += d * d;
          hi[0] = std::max(hi[0], v);
          lo[0] = std::min(lo[0], v);
        }
        t1 += hsum(a1);
        t2 += hsum(a2);
      }
      float h = hi[0], w = lo[0];
      for (int64_t l = 1; l < kLanes; ++l) {
        h = std::max(h, hi[l]);
        w = std::min(w, lo[l]);
      }
      s1p[r] = t1;
      s2p[r] = t2;
      mxp[r] = h;
      mnp[r] = w;
    }
  });
  return {s1, s2, mx, mn};
}

// (mean, max) over C of x·g_c: two (N, HW) tensors.
std::vector<at::Tensor> spatial_pool(const at::Tensor& z, const OptT& a, const OptT& b, const at::Tensor& gc) {
  check(z, "z"); check(gc, "gc");
  const int64_t N = z.size(0), C = z.size(1), HW = z.size(2) * z.size(3);
  const Affine af = affine(a, b, C);
  auto avg = at::empty({N, HW}, z.options()), mx = at::empty({N, HW}, z.options());
  const float *zp = z.data_ptr<float>(), *gp = gc.data_ptr<float>();
  float *ap = avg.data_ptr<float>(), *mp = mx.data_ptr<float>();
  const int64_t nb = (HW + kBlock - 1) / kBlock;
  dispatch_affine(af, [&](auto tag) {
    constexpr bool kA = decltype(tag)::value;
    at::parallel_for(0, N * nb, 1, [&](int64_t t0, int64_t t1) {
      float s[kBlock], m[kBlock];
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t / nb, h0 = (t % nb) * kBlock, w = std::min(kBlock, HW - h0);
        std::fill(s, s + w, 0.f);
        std::fill(m, m + w, -std::numeric_limits<float>::infinity());
        for (int64_t c = 0; c < C; ++c) {
          float sa, sb;
          af.get(c, sa, sb);
          const float g = gp[n * C + c];
          const float* p = zp + (n * C + c) * HW + h0;
          prefetch_ahead(p, c, C, HW, w);
          for (int64_t j = 0; j < w; ++j) {
            const float v = xv<kA>(p[j], sa, sb) * g;
            s[j] += v;
            m[j] = std::max(m[j], v);
          }
        }
        for (int64_t j = 0; j < w; ++j) {
          ap[n * HW + h0 + j] = s[j] / C;
          mp[n * HW + h0 + j] = m[j];
        }
      }
    });
  });
  return {avg, mx};
}

// y = x·g_c·g_s (g_s optional: SE). With out given (may alias z when there is no affine), writes there.
at::Tensor apply_gates(const at::Tensor& z, const OptT& a, const OptT& b, const at::Tensor& gc, const OptT& gs,
                       const OptT& out) {
  check(z, "z"); check(gc, "gc");
  const int64_t N = z.size(0), C = z.size(1), HW = z.size(2) * z.size(3);
  const Affine af = affine(a, b, C);
  at::Tensor y = out.has_value() ? *out : at::empty_like(z);
  check(y, "out");
  const float *zp = z.data_ptr<float>(), *gp = gc.data_ptr<float>(), *sp = ptr_or_null(gs);
  float* yp = y.data_ptr<float>();
  for_rows(af, N * C, C, [&](auto tag, int64_t r, float sa, float sb) {
    constexpr bool kA = decltype(tag)::value;
    const float g = gp[r];
    const float* p = zp + r * HW;
    float* q = yp + r * HW;
    if (sp) {
      const float* s = sp + (r / C) * HW;
      for (int64_t j = 0; j < HW; ++j) q[j] = (xv<kA>(p[j], sa, sb) * g) * s[j];
    } else {
      for (int64_t j = 0; j < HW; ++j) q[j] = xv<kA>(p[j], sa, sb) * g;
    }
  });
  return y;
}

// Gradients of the gates from dy: dg_c = Σ_hw dy·x·g_s (N, C) and dg_s = Σ_c dy·x·g_c (N, HW);
// with s_max also the number of channels where x·g_c equals it (N, HW; else undefined).
std::vector<at::Tensor> gate_grads(const at::Tensor& dy, const at::Tensor& z, const OptT& a, const OptT& b,
                                   const at::Tensor& gc, const OptT& gs, const OptT& smax) {
  check(dy, "dy"); check(z, "z"); check(gc, "gc");
  const int64_t N = z.size(0), C = z.size(1), HW = z.size(2) * z.size(3);
  const Affine af = affine(a, b, C);
  const float *zp = z.data_ptr<float>(), *dp = dy.data_ptr<float>(), *gp = gc.data_ptr<float>(),
              *sp = ptr_or_null(gs);
  auto dgc = at::empty({N, C}, z.options());
  float* dgcp = dgc.data_ptr<float>();
  if (!sp) {  // SE: one reduction per row
    for_rows(af, N * C, C, [&](auto tag, int64_t r, float sa, float sb) {
      const float *p = zp + r * HW, *q = dp + r * HW;
      dgcp[r] = static_cast<float>(
          lane_sum(HW, [&](int64_t i) { return q[i] * xv<decltype(tag)::value>(p[i], sa, sb); }));
    });
    return {dgc, at::Tensor(), at::Tensor()};
  }
  if (smax.has_value()) check(*smax, "smax");
  auto dgs = at::empty({N, HW}, z.options());
  auto cnt = smax.has_value() ? at::empty({N, HW}, z.options()) : at::Tensor();
  float *dgsp = dgs.data_ptr<float>(), *cntp = smax.has_value() ? cnt.data_ptr<float>() : nullptr;
  const float* mp = ptr_or_null(smax);  // without it the tie count is not formed
  const int64_t nb = (HW + kBlock - 1) / kBlock;
  std::vector<double> part(N * nb * C);
  dispatch_affine(af, [&](auto tag) {
    constexpr bool kA = decltype(tag)::value;
    at::parallel_for(0, N * nb, 1, [&](int64_t t0, int64_t t1) {
      float ds[kBlock], k[kBlock];
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t / nb, blk = t % nb, h0 = blk * kBlock, w = std::min(kBlock, HW - h0);
        const float *s = sp + n * HW + h0, *m = mp ? mp + n * HW + h0 : nullptr;
        std::fill(ds, ds + w, 0.f);
        std::fill(k, k + w, 0.f);
        for (int64_t c = 0; c < C; ++c) {
          float sa, sb;
          af.get(c, sa, sb);
          const float g = gp[n * C + c];
          const float *p = zp + (n * C + c) * HW + h0, *q = dp + (n * C + c) * HW + h0;
          prefetch_ahead(p, c, C, HW, w);
          prefetch_ahead(q, c, C, HW, w);
          const vf va = splat(sa), vb = splat(sb), vg = splat(g), one = splat(1.f), zero = {};
          vf acc = {};
          int64_t j = 0;
          for (; j + kLanes <= w; j += kLanes) {
            const vf x = kA ? va * load(p + j) + vb : load(p + j), u = load(q + j) * x;
            acc += u * load(s + j);
            store(ds + j, load(ds + j) + u * vg);
            if (m) store(k + j, load(k + j) + (x * vg == load(m + j) ? one : zero));
          }
          for (; j < w; ++j) {
            const float x = xv<kA>(p[j], sa, sb), u = q[j] * x;
            acc[0] += u * s[j];
            ds[j] += u * g;
            if (m) k[j] += x * g == m[j] ? 1.f : 0.f;
          }
          part[(n * nb + blk) * C + c] = hsum(acc);
        }
        std::copy(ds, ds + w, dgsp + n * HW + h0);
        if (m) std::copy(k, k + w, cntp + n * HW + h0);
      }
    });
  });
  sum_parts(part, N, nb, C, dgcp);
  return {dgc, dgs, cnt};
}

// Σ_hw x·(w_avg + [x·g_c == s_max]·w_max): the gradient reaching g_c through the spatial
// pooling, with w_avg = d(avg)/C and w_max = d(max)/count per pixel, (N, HW) each.
at::Tensor spatial_pool_grad(const at::Tensor& z, const OptT& a, const OptT& b, const at::Tensor& gc,
                             const at::Tensor& smax, const at::Tensor& w_avg, const at::Tensor& w_max) {
  check(z, "z"); check(gc, "gc"); check(smax, "smax"); check(w_avg, "w_avg"); check(w_max, "w_max");
  const int64_t N = z.size(0), C = z.size(1), HW = z.size(2) * z.size(3);
  const Affine af = affine(a, b, C);
  const float *zp = z.data_ptr<float>(), *gp = gc.data_ptr<float>(), *mp = smax.data_ptr<float>(),
              *wap = w_avg.data_ptr<float>(), *wmp = w_max.data_ptr<float>();
  auto out = at::empty({N, C}, z.options());
  float* op = out.data_ptr<float>();
  for_rows(af, N * C, C, [&](auto tag, int64_t r, float sa, float sb) {
    const float g = gp[r];
    const int64_t n = r / C;
    const float *p = zp + r * HW, *m = mp + n * HW, *wa = wap + n * HW, *wm = wmp + n * HW;
    op[r] = static_cast<float>(lane_sum(HW, [&](int64_t i) {
      const float x = xv<decltype(tag)::value>(p[i], sa, sb), w = wm[i];
      return x * (wa[i] + (x * g == m[i] ? w : 0.f));
    }));
  });
  return out;
}

// dx = dy·g_c·g_s + g_c·(w_avg + [x·g_c == s_max]·w_max) + d_avg/HW + [x == c_max]·d_max/count.
// The spatial terms are optional (SE), and so is the channel max (SE: c_max, d_max absent).
// With sums=true also returns the per-(n, c) Σdx and Σdx·z that a BatchNorm backward needs.
// With out given, dx is written there; out may be z (each element is read before it is written).
std::vector<at::Tensor> input_grad(const at::Tensor& dy, const at::Tensor& z, const OptT& a, const OptT& b,
                                   const at::Tensor& gc, const OptT& gs, const OptT& smax, const OptT& w_avg,
                                   const OptT& w_max, const at::Tensor& d_avg, const OptT& c_max,
                                   const OptT& d_max, bool sums, const OptT& out) {
  check(dy, "dy"); check(z, "z"); check(gc, "gc"); check(d_avg, "d_avg");
  TORCH_CHECK(!(sums && out.has_value()), "out (writing dx over z) cannot be combined with sums");
  const int64_t N = z.size(0), C = z.size(1), HW = z.size(2) * z.size(3);
  const Affine af = affine(a, b, C);
  const bool spatial = smax.has_value();
  TORCH_CHECK(!spatial || (gs.has_value() && w_avg.has_value() && w_max.has_value()),
              "smax needs gs, w_avg and w_max");
  const float *zp = z.data_ptr<float>(), *dp = dy.data_ptr<float>(), *gp = gc.data_ptr<float>(),
              *sp = ptr_or_null(gs), *mp = ptr_or_null(smax), *wap = ptr_or_null(w_avg),
              *wmp = ptr_or_null(w_max), *dap = d_avg.data_ptr<float>(), *cmp = ptr_or_null(c_max),
              *dmp = ptr_or_null(d_max);
  at::Tensor dx = out.has_value() ? *out : at::empty_like(z);  // out may be z itself: read, then overwrite
  check(dx, "out");
  float* xp = dx.data_ptr<float>();
  at::Tensor s1, s2;
  float *s1p = nullptr, *s2p = nullptr;
  if (sums) {
    s1 = at::empty({N, C}, z.options());
    s2 = at::empty({N, C}, z.options());
    s1p = s1.data_ptr<float>();
    s2p = s2.data_ptr<float>();
  }
  for_rows(af, N * C, C, [&](auto tag, int64_t r, float sa, float sb) {
    constexpr bool kA = decltype(tag)::value;
    const int64_t n = r / C;
    const float g = gp[r], base = dap[r] / HW;
    const float *p = zp + r * HW, *q = dp + r * HW;
    float* o = xp + r * HW;
    float cm = std::numeric_limits<float>::quiet_NaN(), cmg = 0.f;  // NaN: never equal
    if (cmp && dmp[r] != 0.f) {
      cm = cmp[r];
      cmg = dmp[r] / std::max(count_equal<kA>(p, HW, sa, sb, cm), 1.f);
    }
    double t1 = 0, t2 = 0;
    const float *s = sp ? sp + n * HW : nullptr;
    if (spatial) {
      const float *m = mp + n * HW, *wa = wap + n * HW, *wm = wmp + n * HW;
      if (sums) dx_row<kA, true, true, true>(o, p, q, s, m, wa, wm, HW, sa, sb, g, base, cm, cmg, t1, t2);
      else dx_row<kA, true, true, false>(o, p, q, s, m, wa, wm, HW, sa, sb, g, base, cm, cmg, t1, t2);
    } else if (sp) {
      if (sums) dx_row<kA, true, false, true>(o, p, q, s, nullptr, nullptr, nullptr, HW, sa, sb, g, base, cm, cmg, t1, t2);
      else dx_row<kA, true, false, false>(o, p, q, s, nullptr, nullptr, nullptr, HW, sa, sb, g, base, cm, cmg, t1, t2);
    } else {
      if (sums) dx_row<kA, false, false, true>(o, p, q, s, nullptr, nullptr, nullptr, HW, sa, sb, g, base, cm, cmg, t1, t2);
      else dx_row<kA, false, false, false>(o, p, q, s, nullptr, nullptr, nullptr, HW, sa, sb, g, base, cm, cmg, t1, t2);
    }
    if (sums) {
      s1p[r] = static_cast<float>(t1);
      s2p[r] = static_cast<float>(t2);
    }
  });
  return {dx, s1, s2};
}

// In place: t = A[c]·t + B[c]·z + D[c] (the BatchNorm backward once its sums are known).
at::Tensor affine_combine_(at::Tensor t, const at::Tensor& z, const at::Tensor& A, const at::Tensor& B,
                           const at::Tensor& D) {
  check(t, "t"); check(z, "z"); check(A, "A"); check(B, "B"); check(D, "D");
  const int64_t N = z.size(0), C = z.size(1), HW = z.size(2) * z.size(3);
  float* tp = t.data_ptr<float>();
  const float *zp = z.data_ptr<float>(), *Ap = A.data_ptr<float>(), *Bp = B.data_ptr<float>(),
              *Dp = D.data_ptr<float>();
  at::parallel_for(0, N * C, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t c = r % C;
      const float ca = Ap[c], cb = Bp[c], cd = Dp[c];
      float* o = tp + r * HW;
      const float* p = zp + r * HW;
      for (int64_t j = 0; j < HW; ++j) o[j] = ca * o[j] + cb * p[j] + cd;
    }
  });
  return t;
}

// BAM: y = x ⊗ (r + σ(t)), t = c[n,c] + s[n,hw] (product: c·s), r = 1 (residual) or 0.
// With out given (may alias x), writes there.
at::Tensor bam_apply(const at::Tensor& x, const at::Tensor& c, const at::Tensor& s, bool product, bool residual,
                     const OptT& out) {
  check(x, "x"); check(c, "c"); check(s, "s");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  at::Tensor y = out.has_value() ? *out : at::empty_like(x);
  check(y, "out");
  const float *xp = x.data_ptr<float>(), *cp = c.data_ptr<float>(), *sp = s.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const float r = residual ? 1.f : 0.f;
  auto run = [&](auto tag) {
    constexpr bool kP = decltype(tag)::value;
    at::parallel_for(0, N * C, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row) {
        const float cv = cp[row];
        const float *p = xp + row * HW, *q = sp + (row / C) * HW;
        float* o = yp + row * HW;
        for (int64_t j = 0; j < HW; ++j) o[j] = p[j] * (r + sigmoid(bam_logit<kP>(cv, q[j])));
      }
    });
  };
  if (product) run(std::true_type{});
  else run(std::false_type{});
  return y;
}

// BAM backward of y = x ⊗ (r + σ(t)): dx = dy ⊗ (r + σ(t)) (the direct term), and with
// g = dy·x·σ'(t): dc = Σ_hw g·∂t/∂c (N, C), ds = Σ_c g·∂t/∂s (N, HW).
std::vector<at::Tensor> bam_grads(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& c,
                                  const at::Tensor& s, bool product, bool residual) {
  check(dy, "dy"); check(x, "x"); check(c, "c"); check(s, "s");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  auto dx = at::empty_like(x), dc = at::empty({N, C}, x.options()), ds = at::empty({N, HW}, x.options());
  const float *xp = x.data_ptr<float>(), *dp = dy.data_ptr<float>(), *cp = c.data_ptr<float>(),
              *sp = s.data_ptr<float>();
  float *dxp = dx.data_ptr<float>(), *dcp = dc.data_ptr<float>(), *dsp = ds.data_ptr<float>();
  const float r = residual ? 1.f : 0.f;
  const int64_t nb = (HW + kBlock - 1) / kBlock;
  std::vector<double> part(N * nb * C);
  auto run = [&](auto tag) {
    constexpr bool kP = decltype(tag)::value;
    at::parallel_for(0, N * nb, 1, [&](int64_t t0, int64_t t1) {
      float acc_s[kBlock];
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t / nb, blk = t % nb, h0 = blk * kBlock, w = std::min(kBlock, HW - h0);
        const float* q = sp + n * HW + h0;
        std::fill(acc_s, acc_s + w, 0.f);
        for (int64_t ch = 0; ch < C; ++ch) {
          const float cv = cp[n * C + ch];
          const int64_t off = (n * C + ch) * HW + h0;
          const float *p = xp + off, *g = dp + off;
          float* o = dxp + off;
          float acc[kLanes] = {0};
          int64_t j = 0;
          for (; j + kLanes <= w; j += kLanes)
            for (int64_t l = 0; l < kLanes; ++l) {
              const float m = sigmoid(bam_logit<kP>(cv, q[j + l])), gt = g[j + l] * p[j + l] * m * (1.f - m);
              o[j + l] = g[j + l] * (r + m);
              acc[l] += kP ? gt * q[j + l] : gt;
              acc_s[j + l] += kP ? gt * cv : gt;
            }
          for (; j < w; ++j) {
            const float m = sigmoid(bam_logit<kP>(cv, q[j])), gt = g[j] * p[j] * m * (1.f - m);
            o[j] = g[j] * (r + m);
            acc[0] += kP ? gt * q[j] : gt;
            acc_s[j] += kP ? gt * cv : gt;
          }
          double total = 0;
          for (int64_t l = 0; l < kLanes; ++l) total += acc[l];
          part[(n * nb + blk) * C + ch] = total;
        }
        std::copy(acc_s, acc_s + w, dsp + n * HW + h0);
      }
    });
  };
  if (product) run(std::true_type{});
  else run(std::false_type{});
  sum_parts(part, N, nb, C, dcp);
  return {dx, dc, ds};
}

// CBAM's spatial conv (eq. 3): a k×k cross-correlation of the (N, Cin, H, W) pooled maps with
// one output channel, zero padding k/2, stride 1, no bias. A general convolution routine is
// slow for one output channel; here every output row is a sum of shifted input rows.
void check_conv(const at::Tensor& in, const at::Tensor& w) {
  check(in, "input"); check(w, "weight");
  TORCH_CHECK(in.dim() == 4 && w.dim() == 4 && w.size(0) == 1 && w.size(1) == in.size(1) &&
              w.size(2) == w.size(3) && w.size(2) % 2 == 1,
              "spatial_conv: expected input (N, Cin, H, W) and weight (1, Cin, k, k) with odd k");
}

// o[j] += wt · row[j + off] for every j in [0, W) whose j + off lies in [0, W)
inline void shifted_axpy(float* o, const float* row, float wt, int64_t off, int64_t W) {
  const int64_t j0 = std::max<int64_t>(0, -off), j1 = std::min<int64_t>(W, W - off);
  for (int64_t j = j0; j < j1; ++j) o[j] += wt * row[j + off];
}

at::Tensor spatial_conv(const at::Tensor& in, const at::Tensor& w) {
  check_conv(in, w);
  const int64_t N = in.size(0), Cin = in.size(1), H = in.size(2), W = in.size(3), k = w.size(2), p = k / 2;
  auto out = at::zeros({N, 1, H, W}, in.options());
  const float *ip = in.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, N * H, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / H, i = r % H;
      for (int64_t c = 0; c < Cin; ++c)
        for (int64_t u = 0; u < k; ++u) {
          const int64_t ii = i + u - p;
          if (ii < 0 || ii >= H) continue;
          const float* row = ip + ((n * Cin + c) * H + ii) * W;
          for (int64_t v = 0; v < k; ++v) shifted_axpy(op + r * W, row, wp[(c * k + u) * k + v], v - p, W);
        }
    }
  });
  return out;
}

// (d input, d weight) of spatial_conv from d out (N, 1, H, W); each only when asked for
std::vector<at::Tensor> spatial_conv_grad(const at::Tensor& dout, const at::Tensor& in, const at::Tensor& w,
                                          bool want_input, bool want_weight) {
  check_conv(in, w); check(dout, "dout");
  const int64_t N = in.size(0), Cin = in.size(1), H = in.size(2), W = in.size(3), k = w.size(2), p = k / 2;
  TORCH_CHECK(dout.numel() == N * H * W, "spatial_conv_grad: dout must be (N, 1, H, W)");
  const float *gp = dout.data_ptr<float>(), *ip = in.data_ptr<float>(), *wp = w.data_ptr<float>();
  at::Tensor din, dw;
  if (want_input) {  // din[n, c, i, j] = Σ_uv w[c, u, v] · dout[n, i - u + p, j - v + p]
    din = at::zeros_like(in);
    float* dp = din.data_ptr<float>();
    at::parallel_for(0, N * Cin * H, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t i = r % H, c = (r / H) % Cin, n = r / (H * Cin);
        for (int64_t u = 0; u < k; ++u) {
          const int64_t oi = i - u + p;
          if (oi < 0 || oi >= H) continue;
          const float* g = gp + (n * H + oi) * W;
          for (int64_t v = 0; v < k; ++v) shifted_axpy(dp + r * W, g, wp[(c * k + u) * k + v], p - v, W);
        }
      }
    });
  }
  if (want_weight) {  // dw[c, u, v] = Σ_n,i,j dout[n, i, j] · in[n, c, i + u - p, j + v - p]
    dw = at::empty_like(w);
    float* dwp = dw.data_ptr<float>();
    at::parallel_for(0, Cin * k * k, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t c = t / (k * k), u = (t / k) % k, off = t % k - p;
        const int64_t j0 = std::max<int64_t>(0, -off), j1 = std::min<int64_t>(W, W - off);
        double total = 0;
        for (int64_t n = 0; n < N; ++n)
          for (int64_t i = std::max<int64_t>(0, p - u); i < std::min<int64_t>(H, H + p - u); ++i) {
            const float *g = gp + (n * H + i) * W + j0, *x = ip + ((n * Cin + c) * H + i + u - p) * W + j0 + off;
            total += lane_sum(j1 - j0, [&](int64_t j) { return g[j] * x[j]; });
          }
        dwp[t] = static_cast<float>(total);
      }
    });
  }
  return {din, dw};
}

// BAM's channel reduction (Park et al., BMVC 2018, eq. 4: f^{1×1}_0), forward: a 1×1 conv
// with few output channels O (C/r). For such a thin output PyTorch's convolution is slow on
// NCHW maps (22 ms against 6 ms here on 2×256×128×192 → 16 channels); here kGroup outputs of
// 16 pixels stay in registers while the input channels stream by.
void check_pointwise(const at::Tensor& x, const at::Tensor& w) {
  check(x, "input"); check(w, "weight");
  TORCH_CHECK(x.dim() == 4 && w.dim() == 2 && w.size(1) == x.size(1),
              "pointwise_conv: expected input (N, C, H, W) and weight (O, C)");
}

// pixels per task: the task's input block (C × blk floats) stays in L2
int64_t pointwise_block(int64_t C) { return std::max<int64_t>(kLanes, 65536 / C / kLanes * kLanes); }
constexpr int kGroup = 16;  // outputs (or input channels) held in registers at once

// acc[k] = Σ_i u[i][k] · v_i over n terms: the register-blocked core of the 1×1 conv kernels.
// v_i = load(vrow + i·vstride); u[i][k] = urow[i·ustride + k] (G consecutive floats).
template <int G>
inline void outer_sum(vf* acc, int64_t n, const float* vrow, int64_t vstride, const float* urow, int64_t ustride) {
  vf a[G];
  for (int k = 0; k < G; ++k) a[k] = acc[k];
  for (int64_t i = 0; i < n; ++i) {
    const vf v = load(vrow + i * vstride);
    const float* u = urow + i * ustride;
    for (int k = 0; k < G; ++k) a[k] += splat(u[k]) * v;
  }
  for (int k = 0; k < G; ++k) acc[k] = a[k];
}

// outer_sum for any g ≤ kGroup (full groups take the unrolled G = kGroup path)
inline void outer_sum_any(int g, vf* acc, int64_t n, const float* vrow, int64_t vstride, const float* urow,
                          int64_t ustride) {
  if (g == kGroup) return outer_sum<kGroup>(acc, n, vrow, vstride, urow, ustride);
  for (int64_t i = 0; i < n; ++i) {
    const vf v = load(vrow + i * vstride);
    for (int k = 0; k < g; ++k) acc[k] += splat(urow[i * ustride + k]) * v;
  }
}

// out[n, o] = bias[o] + Σ_c w[o, c] · x[n, c]
at::Tensor pointwise_conv(const at::Tensor& x, const at::Tensor& w, const OptT& bias) {
  check_pointwise(x, w);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), O = w.size(0);
  const int64_t blk = pointwise_block(C), nb = (HW + blk - 1) / blk;
  auto out = at::empty({N, O, x.size(2), x.size(3)}, x.options());
  const at::Tensor wt = w.t().contiguous();  // (C, O): the weights of one input channel side by side
  const float *xp = x.data_ptr<float>(), *wtp = wt.data_ptr<float>(), *bp = ptr_or_null(bias);
  float* op = out.data_ptr<float>();
  at::parallel_for(0, N * nb, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nb, h0 = (t % nb) * blk, wd = std::min(blk, HW - h0);
      const float* xn = xp + n * C * HW;
      float* on = op + n * O * HW;
      int64_t j = h0;
      for (; j + kLanes <= h0 + wd; j += kLanes)
        for (int64_t o0 = 0; o0 < O; o0 += kGroup) {
          const int g = static_cast<int>(std::min<int64_t>(kGroup, O - o0));
          vf acc[kGroup];
          for (int k = 0; k < g; ++k) acc[k] = splat(bp ? bp[o0 + k] : 0.f);
          outer_sum_any(g, acc, C, xn + j, HW, wtp + o0, O);
          for (int k = 0; k < g; ++k) store(on + (o0 + k) * HW + j, acc[k]);
        }
      for (; j < h0 + wd; ++j)
        for (int64_t o = 0; o < O; ++o) {
          float v = bp ? bp[o] : 0.f;
          for (int64_t c = 0; c < C; ++c) v += wtp[c * O + o] * xn[c * HW + j];
          on[o * HW + j] = v;
        }
    }
  });
  return out;
}

// d input of pointwise_conv: dx[n, c] = Σ_o w[o, c] · dout[n, o], kGroup channels at a time,
// each group's rows written front to back
at::Tensor pointwise_conv_input_grad(const at::Tensor& dout, const at::Tensor& w) {
  check(dout, "dout"); check(w, "weight");
  TORCH_CHECK(dout.dim() == 4 && w.dim() == 2 && w.size(0) == dout.size(1),
              "pointwise_conv_input_grad: expected dout (N, O, H, W) and weight (O, C)");
  const int64_t N = dout.size(0), O = dout.size(1), HW = dout.size(2) * dout.size(3), C = w.size(1);
  const int64_t blk = pointwise_block(C), nb = (HW + blk - 1) / blk;
  auto dx = at::empty({N, C, dout.size(2), dout.size(3)}, dout.options());
  const float *gp = dout.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* dxp = dx.data_ptr<float>();
  at::parallel_for(0, N * nb, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nb, h0 = (t % nb) * blk, wd = std::min(blk, HW - h0), wv = wd / kLanes * kLanes;
      const float* gn = gp + n * O * HW + h0;
      float* dn = dxp + n * C * HW + h0;
      for (int64_t c0 = 0; c0 < C; c0 += kGroup)
        for (int64_t j = 0; j < wv; j += kLanes) {
          const int g = static_cast<int>(std::min<int64_t>(kGroup, C - c0));
          vf acc[kGroup] = {};
          outer_sum_any(g, acc, O, gn + j, HW, wp + c0, C);
          for (int k = 0; k < g; ++k) store(dn + (c0 + k) * HW + j, acc[k]);
        }
      for (int64_t j = wv; j < wd; ++j)
        for (int64_t c = 0; c < C; ++c) {
          float v = 0.f;
          for (int64_t o = 0; o < O; ++o) v += wp[o * C + c] * gn[o * HW + j];
          dn[c * HW + j] = v;
        }
    }
  });
  return dx;
}

// Inference of CBAM / SE in one call (no autograd): the pools, the shared MLP on the stacked
// descriptors, the k×k conv with the gate's BatchNorm (eval: running statistics) and the
// products, with the same ATen ops as the module's Python code for the small steps, so the
// result is the same; only the per-op dispatch from Python is gone. conv_w absent: SE (no
// spatial gate; use_max false). With out given (may alias z when there is no affine), writes there.
at::Tensor gated_infer(const at::Tensor& z, const OptT& a, const OptT& b, const at::Tensor& w1,
                       const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, bool use_max,
                       const OptT& conv_w, const OptT& bn_w, const OptT& bn_b, const OptT& bn_mean,
                       const OptT& bn_var, double bn_eps, bool avg_first, const OptT& out) {
  check(z, "z");
  const int64_t N = z.size(0), H = z.size(2), W = z.size(3);
  auto pools = channel_pool(z, a, b);
  const at::Tensor desc = use_max ? at::cat({pools[0], pools[1]}, 0) : pools[0];
  at::Tensor logit = at::linear(at::relu(at::linear(desc, w1, b1)), w2, b2);
  if (use_max) logit = logit.narrow(0, 0, N) + logit.narrow(0, N, N);
  const at::Tensor gc = at::sigmoid(logit).contiguous();
  OptT gs;
  if (conv_w.has_value()) {
    auto sp = spatial_pool(z, a, b, gc);
    const at::Tensor maps = at::stack(avg_first ? at::TensorList{sp[0], sp[1]} : at::TensorList{sp[1], sp[0]}, 1)
                                .view({N, 2, H, W});
    const at::Tensor t = at::batch_norm(spatial_conv(maps, conv_w->contiguous()), bn_w, bn_b, bn_mean, bn_var,
                                        false, 0.0, bn_eps, false);
    gs = at::sigmoid(t).view({N, H * W});
  }
  return apply_gates(z, a, b, gc, gs, out);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gated_infer", &gated_infer);
  m.def("pointwise_conv", &pointwise_conv);
  m.def("pointwise_conv_input_grad", &pointwise_conv_input_grad);
  m.def("channel_pool", &channel_pool);
  m.def("channel_moments", &channel_moments);
  m.def("spatial_pool", &spatial_pool);
  m.def("apply_gates", &apply_gates);
  m.def("gate_grads", &gate_grads);
  m.def("spatial_pool_grad", &spatial_pool_grad);
  m.def("input_grad", &input_grad);
  m.def("affine_combine_", &affine_combine_);
  m.def("bam_apply", &bam_apply);
  m.def("bam_grads", &bam_grads);
  m.def("spatial_conv", &spatial_conv);
  m.def("spatial_conv_grad", &spatial_conv_grad);
  // abilities, declared as the Triton kernels declare theirs (cbam_det/kernels/triton_gate.py):
  // the pools give no centred sums of a folded BN, and no kernel rounds a folded BN's extremes
  m.attr("CENTERED_SUMS") = false;
  m.attr("affine_extreme") = pybind11::none();
}

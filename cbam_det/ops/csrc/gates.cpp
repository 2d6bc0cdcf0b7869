// CBAM (Woo et al., ECCV 2018, eq. 1-3) and SE (Hu et al., CVPR 2018) on the CPU: the C++ kernels of
// the op family cbam_det::gates (cbam_det/kernels/library/gates.py). gates_forward and
// gates_backward each do a whole module call: the full-size passes over (N, C, H, W) float32 NCHW
// tensors, one pass each with no temporaries, where x = a[c]·z + b[c] is the input itself or a
// BatchNorm's output computed on the fly from its input z; and the small steps between them (the
// shared MLP, the k×k conv with one output channel, the spatial BatchNorm, the sigmoids) written
// out, forward and backward. The state (the small tensors backward needs) has the layout the
// Python side passes in (`lay`: the offsets of cbam_det.kernels.library.gates.Layout). Max-pool
// gradients are shared evenly between tied maxima, as torch's amax does.
#include "common.h"

namespace {


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
  auto out = at::empty({N, 1, H, W}, in.options());
  const float *ip = in.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, N * H, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / H, i = r % H;
      std::fill(op + r * W, op + (r + 1) * W, 0.f);
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
    din = at::empty_like(in);
    float* dp = din.data_ptr<float>();
    at::parallel_for(0, N * Cin * H, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        std::fill(dp + r * W, dp + (r + 1) * W, 0.f);
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


// ---------------------------------------------------------------- the small steps

enum BnMode { kBnNone = 0, kBnBatch = 1, kBnRunning = 2, kBnOwn = 3 };
enum Spatial { kSpatialNone = 0, kSpatialAvgMax = 1 };

// offsets of the two states (cbam_det.kernels.library.gates.Layout, in its order): the channel
// state (csize floats) and the pixel state (psize floats, CBAM)
struct Lay {
  int64_t gc, gl, avg, max, z1, hid, a, b, mean, var, invstd, sstat, csize, savg, smax, o, gs, psize;
  explicit Lay(const std::vector<int64_t>& v) {
    TORCH_CHECK(v.size() == 18, "gates: the state layout has 18 entries");
    gc = v[0]; gl = v[1]; avg = v[2]; max = v[3]; z1 = v[4]; hid = v[5]; a = v[6]; b = v[7]; mean = v[8];
    var = v[9]; invstd = v[10]; sstat = v[11]; csize = v[12]; savg = v[13]; smax = v[14]; o = v[15]; gs = v[16];
    psize = v[17];
  }
};

inline float sigmoid_f(float t) { return 1.f / (1.f + std::exp(-t)); }
inline float value_or(const OptT& t, float d) {  // a CPU scalar read directly (no ATen call)
  return t.has_value() && t->defined() ? t->data_ptr<float>()[0] : d;
}
inline at::Tensor part(const at::Tensor& st, int64_t at, std::initializer_list<int64_t> shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return st.narrow(0, at, n).view(shape);
}

// y[r, j] = Σ_k w[j, k] · v[r, k] (+ bias[j]): the small matrix products of the MLP
void matvec(const float* v, int64_t rows, int64_t K, const float* w, const float* bias, int64_t J, float* y) {
  at::parallel_for(0, rows * J, 64, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r = t / J, j = t % J;
      const float *wr = w + j * K, *vr = v + r * K;
      double acc = bias ? bias[j] : 0.0;
      for (int64_t k = 0; k < K; ++k) acc += static_cast<double>(wr[k]) * vr[k];
      y[t] = static_cast<float>(acc);
    }
  });
}

// the spatial gate's (N, 2, H, W) input, [avg; max] or [max; avg], from the two (N, H·W) maps
at::Tensor pooled_maps(const float* avg, const float* mx, bool avg_first, int64_t N, int64_t H, int64_t W,
                       const at::TensorOptions& options) {
  auto maps = at::empty({N, 2, H, W}, options);
  float* p = maps.data_ptr<float>();
  const int64_t HW = H * W;
  for (int64_t n = 0; n < N; ++n) {
    std::copy(avg_first ? avg + n * HW : mx + n * HW, (avg_first ? avg : mx) + (n + 1) * HW, p + (2 * n) * HW);
    std::copy(avg_first ? mx + n * HW : avg + n * HW, (avg_first ? mx : avg) + (n + 1) * HW, p + (2 * n + 1) * HW);
  }
  return maps;
}

}  // namespace

// The whole forward of CBAM (spatial != 0) or SE: y (into out when given; it may be z) and the state.
std::vector<at::Tensor> gates_forward(const at::Tensor& z, const OptT& bnw, const OptT& bnb, const OptT& bnm,
                                      const OptT& bnv, const at::Tensor& w1, const at::Tensor& b1,
                                      const at::Tensor& w2, const at::Tensor& b2, const OptT& cw, const OptT& sw,
                                      const OptT& sb, const OptT& srm, const OptT& srv, const OptT& scale,
                                      int64_t bn_mode, int64_t spatial, bool sbn_batch, double eps, double seps,
                                      const OptT& out, const std::vector<int64_t>& layout) {
  check(z, "z"); check(w1, "w1"); check(b1, "b1"); check(w2, "w2"); check(b2, "b2");
  const Lay L(layout);
  const int64_t N = z.size(0), C = z.size(1), H = z.size(2), W = z.size(3), HW = H * W, HD = w1.size(0);
  const bool cbam = spatial != kSpatialNone;
  auto st = at::empty({L.csize}, z.options()), ps = at::empty({cbam ? L.psize : 0}, z.options());
  float *S = st.data_ptr<float>(), *P = ps.data_ptr<float>();
  std::fill(S, S + L.csize, 0.f);
  const float* zp = z.data_ptr<float>();
  const float s = value_or(scale, 1.f);
  // per (n, c): Σ (z − k), Σ (z − k)², max z, min z with the shift k of the BatchNorm mode
  std::vector<double> s1(N * C), s2(N * C);
  std::vector<float> zmax(N * C), zmin(N * C), shift(C, 0.f);
  if (bn_mode == kBnNone) {
    at::parallel_for(0, N * C, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) row_sum_max<false>(zp + r * HW, HW, 1.f, 0.f, s1[r], zmax[r]);
    });
  } else {
    if (bnm.has_value() && bnm->defined())  // a BN's mean (own BN: its running mean, which keeps the sums small)
      std::copy(bnm->data_ptr<float>(), bnm->data_ptr<float>() + C, shift.begin());
    auto mo = channel_moments(z, at::from_blob(shift.data(), {C}, z.options()));
    const double *m1 = mo[0].data_ptr<double>(), *m2 = mo[1].data_ptr<double>();
    const float *mx = mo[2].data_ptr<float>(), *mn = mo[3].data_ptr<float>();
    std::copy(m1, m1 + N * C, s1.begin());
    std::copy(m2, m2 + N * C, s2.begin());
    std::copy(mx, mx + N * C, zmax.begin());
    std::copy(mn, mn + N * C, zmin.begin());
  }
  // the folded BatchNorm: its statistics and x = a·z + b
  float *A = S + L.a, *B = S + L.b, *Avg = S + L.avg, *Max = S + L.max;
  if (bn_mode != kBnNone) {
    const float *gp = bnw->data_ptr<float>(), *bp = bnb->data_ptr<float>();
    for (int64_t c = 0; c < C; ++c) {
      float mean, var, invstd;
      if (bn_mode == kBnOwn) {
        double t1 = 0, t2 = 0;
        for (int64_t n = 0; n < N; ++n) { t1 += s1[n * C + c]; t2 += s2[n * C + c]; }
        const double m = static_cast<double>(N * HW), d = t1 / m;
        mean = static_cast<float>(shift[c] + d);
        var = static_cast<float>(std::max(t2 / m - d * d, 0.0));
        invstd = 1.f / std::sqrt(var + static_cast<float>(eps));
      } else if (bn_mode == kBnBatch) {
        mean = shift[c];
        invstd = bnv->data_ptr<float>()[c];
        var = 1.f / (invstd * invstd) - static_cast<float>(eps);
      } else {
        mean = shift[c];
        var = bnv->data_ptr<float>()[c];
        invstd = 1.f / std::sqrt(var + static_cast<float>(eps));
      }
      const float a = gp[c] * invstd;
      A[c] = a; B[c] = bp[c] - mean * a;
      S[L.mean + c] = mean; S[L.var + c] = var; S[L.invstd + c] = invstd;
      for (int64_t n = 0; n < N; ++n) {
        const int64_t r = n * C + c;
        S[L.z1 + r] = static_cast<float>(s1[r] - HW * (static_cast<double>(mean) - shift[c]));
        Avg[r] = static_cast<float>(shift[c] + s1[r] / HW) * a + B[c];
        Max[r] = a >= 0 ? zmax[r] * a + B[c] : zmin[r] * a + B[c];
      }
    }
  } else {
    for (int64_t r = 0; r < N * C; ++r) { Avg[r] = static_cast<float>(s1[r] / HW); Max[r] = zmax[r]; }
  }
  // the channel gate: hid = relu(W1·v + b1) for v = avg (and max), gc = s·σ(W2·Σhid + (1|2)·b2)
  std::vector<float> hid(2 * N * HD, 0.f);
  matvec(Avg, N, C, w1.data_ptr<float>(), b1.data_ptr<float>(), HD, hid.data());
  if (cbam) matvec(Max, N, C, w1.data_ptr<float>(), b1.data_ptr<float>(), HD, hid.data() + N * HD);
  std::vector<float> hs(N * HD);
  const int64_t HS = cbam ? 2 * HD : HD;  // the hidden state's stride per image
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < HD; ++j) {
      const float ha = std::max(hid[n * HD + j], 0.f), hm = cbam ? std::max(hid[N * HD + n * HD + j], 0.f) : 0.f;
      float* row = S + L.hid + n * HS;
      row[j] = std::isnan(hid[n * HD + j]) ? hid[n * HD + j] : ha;
      if (cbam) row[HD + j] = std::isnan(hid[N * HD + n * HD + j]) ? hid[N * HD + n * HD + j] : hm;
      hs[n * HD + j] = row[j] + (cbam ? row[HD + j] : 0.f);
    }
  std::vector<float> logit(N * C), b2x(C);
  for (int64_t c = 0; c < C; ++c) b2x[c] = b2.data_ptr<float>()[c] * (cbam ? 2.f : 1.f);
  matvec(hs.data(), N, HD, w2.data_ptr<float>(), b2x.data(), C, logit.data());
  float* G = S + L.gc;
  for (int64_t r = 0; r < N * C; ++r) {
    G[r] = sigmoid_f(logit[r]) * s;
    S[L.gl + r] = logit[r];
  }
  const OptT a_t = bn_mode != kBnNone ? OptT(part(st, L.a, {C})) : OptT(), b_t = bn_mode != kBnNone ? OptT(part(st, L.b, {C})) : OptT();
  const at::Tensor gc = part(st, L.gc, {N, C});
  OptT gs_t;
  if (cbam) {  // the spatial gate: pools over C of x·g_c, the k×k conv, its BatchNorm, the sigmoid
    check(*cw, "conv_weight");
    auto sp = spatial_pool(z, a_t, b_t, gc);
    const bool avg_first = spatial == kSpatialAvgMax;
    const at::Tensor maps = pooled_maps(sp[0].data_ptr<float>(), sp[1].data_ptr<float>(), avg_first, N, H, W, z.options());
    std::copy(sp[0].data_ptr<float>(), sp[0].data_ptr<float>() + N * HW, P + L.savg);
    std::copy(sp[1].data_ptr<float>(), sp[1].data_ptr<float>() + N * HW, P + L.smax);
    const at::Tensor o = spatial_conv(maps, *cw);
    const float* op = o.data_ptr<float>();
    std::copy(op, op + N * HW, P + L.o);
    float mean, var;
    if (sbn_batch) {
      double t1 = 0, t2 = 0;
      for (int64_t i = 0; i < N * HW; ++i) t1 += op[i];
      const double m = t1 / (N * HW);
      for (int64_t i = 0; i < N * HW; ++i) t2 += (op[i] - m) * (op[i] - m);
      mean = static_cast<float>(m);
      var = static_cast<float>(t2 / (N * HW));
    } else {
      mean = srv.has_value() ? srm->data_ptr<float>()[0] : 0.f;
      var = srv.has_value() ? srv->data_ptr<float>()[0] : 1.f;
    }
    const float invstd = 1.f / std::sqrt(var + static_cast<float>(seps)), gam = sw->data_ptr<float>()[0],
                bet = sb->data_ptr<float>()[0];
    S[L.sstat] = mean; S[L.sstat + 1] = var; S[L.sstat + 2] = invstd;
    for (int64_t i = 0; i < N * HW; ++i) P[L.gs + i] = sigmoid_f((op[i] - mean) * invstd * gam + bet) * s;
    gs_t = part(ps, L.gs, {N, HW});
  }
  at::Tensor y = apply_gates(z, a_t, b_t, gc, gs_t, out);
  return {y, st, ps};
}

// The whole backward: [dz (undefined unless want_dz), dW1, db1, dW2, db2] + (CBAM) [d conv, d γ_s,
// d β_s] + (folded BN) [d γ, d β].
std::vector<at::Tensor> gates_backward(const at::Tensor& dy, const at::Tensor& z, const at::Tensor& st,
                                       const at::Tensor& ps, const OptT& bnw, const OptT& bnb, const at::Tensor& w1, const at::Tensor& b1,
                                       const at::Tensor& w2, const at::Tensor& b2, const OptT& cw, const OptT& sw,
                                       const OptT& sb, int64_t bn_mode, int64_t spatial, bool sbn_batch,
                                       bool want_dz, const std::vector<int64_t>& layout) {
  check(dy, "dy"); check(z, "z"); check(st, "state");
  const Lay L(layout);
  const int64_t N = z.size(0), C = z.size(1), H = z.size(2), W = z.size(3), HW = H * W, HD = w1.size(0);
  const float *S = st.data_ptr<float>(), *P = ps.data_ptr<float>();
  const bool cbam = spatial != kSpatialNone, bn = bn_mode != kBnNone;
  const OptT a_t = bn ? OptT(part(st, L.a, {C})) : OptT(), b_t = bn ? OptT(part(st, L.b, {C})) : OptT();
  const at::Tensor gc = part(st, L.gc, {N, C});
  std::vector<at::Tensor> spatial_grads;
  OptT gs_t, smax_t, wa_t, wm_t, cmax_t, dmax_t;
  at::Tensor dgc;
  if (cbam) {
    gs_t = part(ps, L.gs, {N, HW});
    smax_t = part(ps, L.smax, {N, HW});
    auto g = gate_grads(dy, z, a_t, b_t, gc, gs_t, smax_t);
    dgc = g[0];
    const float *dgs = g[1].data_ptr<float>(), *cnt = g[2].data_ptr<float>(), *gsp = P + L.gs, *op = P + L.o;
    const float mean = S[L.sstat], invstd = S[L.sstat + 2], gam = sw->data_ptr<float>()[0], coef = gam * invstd,
                bet = sb->data_ptr<float>()[0];
    std::vector<float> dt(N * HW);
    double sum_dt = 0, sum_dtx = 0;
    for (int64_t i = 0; i < N * HW; ++i) {  // σ'(t) as σ(t)·σ(−t): exact for a saturated gate too
      dt[i] = dgs[i] * gsp[i] * sigmoid_f(-((op[i] - mean) * invstd * gam + bet));
      sum_dt += dt[i];
      sum_dtx += static_cast<double>(dt[i]) * ((op[i] - mean) * invstd);
    }
    const float m1 = static_cast<float>(sum_dt / (N * HW)), m2 = static_cast<float>(sum_dtx / (N * HW));
    auto dout = at::empty({N, 1, H, W}, z.options());
    float* dop = dout.data_ptr<float>();
    for (int64_t i = 0; i < N * HW; ++i)
      dop[i] = sbn_batch ? coef * (dt[i] - m1 - (op[i] - mean) * invstd * m2) : coef * dt[i];
    const bool avg_first = spatial == kSpatialAvgMax;
    const at::Tensor maps = pooled_maps(P + L.savg, P + L.smax, avg_first, N, H, W, z.options());
    auto cg = spatial_conv_grad(dout, maps, *cw, true, true);
    const float* dm = cg[0].data_ptr<float>();  // (N, 2, H, W)
    auto wa = at::empty({N, HW}, z.options()), wm = at::empty({N, HW}, z.options());
    float *wap = wa.data_ptr<float>(), *wmp = wm.data_ptr<float>();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < HW; ++i) {
        wap[n * HW + i] = dm[(n * 2 + (avg_first ? 0 : 1)) * HW + i] / static_cast<float>(C);
        wmp[n * HW + i] = dm[(n * 2 + (avg_first ? 1 : 0)) * HW + i] / std::max(cnt[n * HW + i], 1.f);
      }
    wa_t = wa; wm_t = wm;
    const at::Tensor dgp = spatial_pool_grad(z, a_t, b_t, gc, *smax_t, wa, wm);
    float* dgcp = dgc.data_ptr<float>();
    for (int64_t r = 0; r < N * C; ++r) dgcp[r] += dgp.data_ptr<float>()[r];
    auto dsw = at::empty_like(*sw), dsb = at::empty_like(*sw);
    dsw.data_ptr<float>()[0] = static_cast<float>(sum_dtx);
    dsb.data_ptr<float>()[0] = static_cast<float>(sum_dt);
    spatial_grads = {cg[1], dsw, dsb};
  } else {
    dgc = gate_grads(dy, z, a_t, b_t, gc, OptT(), OptT())[0];
  }
  // the MLP backward: d logit = dg_c·g_c·(1 − σ), then the two layers
  const float *G = S + L.gc, *dg = dgc.data_ptr<float>(), *Hd = S + L.hid;
  const int64_t HS = cbam ? 2 * HD : HD;
  const float *W1 = w1.data_ptr<float>(), *W2 = w2.data_ptr<float>(), *Avg = S + L.avg, *Max = S + L.max;
  std::vector<float> dl(N * C), dh(N * HD), dha(N * HD), dhm(N * HD, 0.f);
  for (int64_t r = 0; r < N * C; ++r) dl[r] = dg[r] * G[r] * sigmoid_f(-S[L.gl + r]);
  auto dw2 = at::empty_like(w2), db2 = at::empty_like(b2), dw1 = at::empty_like(w1), db1 = at::empty_like(b1);
  float *DW2 = dw2.data_ptr<float>(), *DB2 = db2.data_ptr<float>(), *DW1 = dw1.data_ptr<float>(),
        *DB1 = db1.data_ptr<float>();
  at::parallel_for(0, C, 16, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double db = 0;
      for (int64_t n = 0; n < N; ++n) db += dl[n * C + c];
      DB2[c] = static_cast<float>(db * (cbam ? 2 : 1));
      for (int64_t j = 0; j < HD; ++j) {
        double acc = 0;
        for (int64_t n = 0; n < N; ++n)
          acc += static_cast<double>(dl[n * C + c]) * (Hd[n * HS + j] + (cbam ? Hd[n * HS + HD + j] : 0.f));
        DW2[c * HD + j] = static_cast<float>(acc);
      }
    }
  });
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < HD; ++j) {
      double acc = 0;
      for (int64_t c = 0; c < C; ++c) acc += static_cast<double>(W2[c * HD + j]) * dl[n * C + c];
      dh[n * HD + j] = static_cast<float>(acc);
      dha[n * HD + j] = Hd[n * HS + j] <= 0 ? 0.f : dh[n * HD + j];  // (NaN passes, as torch's relu)
      if (cbam) dhm[n * HD + j] = Hd[n * HS + HD + j] <= 0 ? 0.f : dh[n * HD + j];
    }
  for (int64_t j = 0; j < HD; ++j) {
    double db = 0;
    for (int64_t n = 0; n < N; ++n) db += dha[n * HD + j] + dhm[n * HD + j];
    DB1[j] = static_cast<float>(db);
  }
  at::parallel_for(0, HD, 1, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j)
      for (int64_t c = 0; c < C; ++c) {
        double acc = 0;
        for (int64_t n = 0; n < N; ++n)
          acc += static_cast<double>(dha[n * HD + j]) * Avg[n * C + c] + static_cast<double>(dhm[n * HD + j]) * Max[n * C + c];
        DW1[j * C + c] = static_cast<float>(acc);
      }
  });
  auto davg = at::empty({N, C}, z.options()), dmax = at::empty({N, C}, z.options());
  float *DA = davg.data_ptr<float>(), *DM = dmax.data_ptr<float>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      double a1 = 0, a2 = 0;
      for (int64_t j = 0; j < HD; ++j) {
        a1 += static_cast<double>(W1[j * C + c]) * dha[n * HD + j];
        a2 += static_cast<double>(W1[j * C + c]) * dhm[n * HD + j];
      }
      DA[n * C + c] = static_cast<float>(a1);
      DM[n * C + c] = static_cast<float>(a2);
    }
  if (cbam) { cmax_t = part(st, L.max, {N, C}); dmax_t = dmax; }
  std::vector<at::Tensor> out;
  at::Tensor dz;
  std::vector<at::Tensor> bn_grads;
  if (want_dz || bn) {
    auto r = input_grad(dy, z, a_t, b_t, gc, gs_t, smax_t, wa_t, wm_t, davg, cmax_t, dmax_t, bn, OptT());
    dz = r[0];
    if (bn) {  // the folded BatchNorm's backward from the per-(n, c) sums of dx and dx·z
      const float *r1 = r[1].data_ptr<float>(), *r2 = r[2].data_ptr<float>();
      auto dbw = at::empty_like(*bnw), dbb = at::empty_like(*bnb);
      auto Ac = at::empty({C}, z.options()), Bc = at::empty({C}, z.options()), Dc = at::empty({C}, z.options());
      const bool batch = bn_mode != kBnRunning;
      const double m = static_cast<double>(N * HW);
      for (int64_t c = 0; c < C; ++c) {
        double sdx = 0, sdxz = 0;
        const double mean = S[L.mean + c], invstd = S[L.invstd + c], a = S[L.a + c];
        for (int64_t n = 0; n < N; ++n) { sdx += r1[n * C + c]; sdxz += r2[n * C + c]; }
        sdxz -= mean * sdx;  // Σ dx·(z − μ)
        dbw.data_ptr<float>()[c] = static_cast<float>(invstd * sdxz);
        dbb.data_ptr<float>()[c] = static_cast<float>(sdx);
        const double k = batch ? a * invstd * invstd * sdxz / m : 0.0;
        Ac.data_ptr<float>()[c] = static_cast<float>(a);
        Bc.data_ptr<float>()[c] = static_cast<float>(-k);
        Dc.data_ptr<float>()[c] = batch ? static_cast<float>(k * mean - a * sdx / m) : 0.f;
      }
      affine_combine_(dz, z, Ac, Bc, Dc);
      bn_grads = {dbw, dbb};
    }
  }
  out = {want_dz ? dz : at::Tensor(), dw1, db1, dw2, db2};
  out.insert(out.end(), spatial_grads.begin(), spatial_grads.end());
  out.insert(out.end(), bn_grads.begin(), bn_grads.end());
  return out;
}

// A BatchNorm's running statistics from the batch statistics in the state (momentum < 0: the
// cumulative average), as nn.BatchNorm2d in training.
void update_stats(at::Tensor rm, at::Tensor rv, at::Tensor nbt, const at::Tensor& st, int64_t l_mean, int64_t l_var,
                  double momentum, double unbias) {
  int64_t* counter = nbt.data_ptr<int64_t>();
  const int64_t count = ++counter[0];
  const float mom = momentum < 0 ? 1.f / static_cast<float>(count) : static_cast<float>(momentum);
  float *m = rm.data_ptr<float>(), *v = rv.data_ptr<float>();
  const float* S = st.data_ptr<float>();
  for (int64_t c = 0; c < rm.numel(); ++c) {
    m[c] = m[c] * (1.f - mom) + S[l_mean + c] * mom;
    v[c] = v[c] * (1.f - mom) + S[l_var + c] * static_cast<float>(unbias) * mom;
  }
}

// ---------------------------------------------------------------- the eager autograd node
// One C++ autograd node per eager call of cbam_det::gates (gates.py `attend`, when this module
// is compiled; gates.py `_Gates` otherwise): its forward calls the op below the autograd key and
// its backward calls cbam_det::gates_backward, as the formula registered on the op for
// torch.compile (gates.py `_backward`) does. The same ops and kernels on every backend, without
// a Python autograd.Function around them: no Python runs between the module and the ops' own
// implementations, in the forward or in the backward.

namespace cbam_det {  // the node's name: cbam_det::GatesNode

struct GatesNode : public torch::autograd::Function<GatesNode> {
  // gates' arguments in schema order; z, γ, β of the BN folded in, the MLP, the conv and the spatial
  // BN's γ and β can need gradients, the running statistics and the gate scale cannot
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z, const OptT& bnw, const OptT& bnb,
                               const OptT& bnm, const OptT& bnv, const at::Tensor& w1, const at::Tensor& b1,
                               const at::Tensor& w2, const at::Tensor& b2, const OptT& cw, const OptT& sw,
                               const OptT& sb, const OptT& srm, const OptT& srv, const OptT& scale, int64_t bn_mode,
                               int64_t spatial, bool sbn_batch, double eps, double seps, bool triton, bool fallback) {
    static const auto op = op_handle("cbam_det::gates");
    torch::jit::Stack stack{z,           or_none(bnw), or_none(bnb), or_none(bnm), or_none(bnv), w1,
                            b1,          w2,           b2,           or_none(cw),  or_none(sw),  or_none(sb),
                            or_none(srm), or_none(srv), or_none(scale), bn_mode,   spatial,      sbn_batch,
                            eps,         seps,         triton,       fallback};
    call_below_autograd(op, stack);
    at::Tensor y = stack[0].toTensor(), cs = stack[1].toTensor(), ps = stack[2].toTensor();
    ctx->save_for_backward({z, cs, ps, value_or_undefined(bnw), value_or_undefined(bnb), w1, b1, w2, b2,
                            value_or_undefined(cw), value_or_undefined(sw), value_or_undefined(sb)});
    ctx->saved_data["flags"] = std::vector<int64_t>{bn_mode, spatial, sbn_batch, triton, fallback};
    ctx->mark_non_differentiable({cs, ps});
    ctx->set_materialize_grads(false);  // the states' gradients stay undefined (no zeros formed)
    return {y, cs, ps};
  }

  // the gradients in the forward's argument order, from gates_backward's
  // [dz, dW1, db1, dW2, db2, (dconv, dγs, dβs if spatial), (dγ, dβ if a BN is folded in)]
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = op_handle("cbam_det::gates_backward");
    const variable_list s = ctx->get_saved_variables();
    const std::vector<int64_t> f = ctx->saved_data["flags"].toIntVector();
    const bool has_spatial = f[1] != 0, has_bn = f[0] != 0;
    torch::jit::Stack stack{grads[0],        s[0],          s[1],          s[2], or_none(s[3]), or_none(s[4]),
                            s[5],            s[6],          s[7],          s[8], or_none(s[9]), or_none(s[10]),
                            or_none(s[11]),  f[0],          f[1],          f[2] != 0,
                            ctx->needs_input_grad(0),       f[3] != 0,     f[4] != 0};
    call_below_autograd(op, stack);
    const c10::List<c10::IValue> g = stack[0].toList();
    auto grad = [&](size_t i) { return tensor_or_undefined(g.get(i)); };
    variable_list out(22);
    out[0] = grad(0);
    for (size_t i = 1; i <= 4; ++i) out[4 + i] = grad(i);  // W1, b1, W2, b2 at 5..8
    if (has_spatial) for (size_t i = 5; i <= 7; ++i) out[4 + i] = grad(i);  // conv, γs, βs at 9..11
    if (has_bn) { out[1] = grad(g.size() - 2); out[2] = grad(g.size() - 1); }
    return out;
  }
};

variable_list gates_node(const at::Tensor& z, const OptT& bnw, const OptT& bnb, const OptT& bnm, const OptT& bnv,
                         const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                         const OptT& cw, const OptT& sw, const OptT& sb, const OptT& srm, const OptT& srv,
                         const OptT& scale, int64_t bn_mode, int64_t spatial, bool sbn_batch, double eps, double seps,
                         bool triton, bool fallback) {
  return GatesNode::apply(z, bnw, bnb, bnm, bnv, w1, b1, w2, b2, cw, sw, sb, srm, srv, scale, bn_mode, spatial,
                          sbn_batch, eps, seps, triton, fallback);
}

}  // namespace cbam_det

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gates_node", &cbam_det::gates_node);
  m.def("gates_forward", &gates_forward);
  m.def("gates_backward", &gates_backward);
  m.def("update_stats", &update_stats);
}

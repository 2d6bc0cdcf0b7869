// BAM's refinement F ⊗ (1 + M(F)) (Park et al., BMVC 2018, eq. 1-2) and its 1×1 channel reduction
// (eq. 4) on the CPU: the C++ kernels of the op family cbam_det::bam (cbam_det/kernels/library/bam.py).
// Inputs: float32, contiguous NCHW, CPU.
#include "common.h"

namespace {
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

}  // namespace

// ---------------------------------------------------------------- the eager autograd node
// One C++ autograd node per eager call of cbam_det::bam_apply (bam.py `refine`, when this module is
// compiled; bam.py `_Bam` otherwise): its forward calls the op below the autograd key, its backward
// cbam_det::bam_backward, as the formula registered on the op for torch.compile (bam.py `_backward`).
namespace cbam_det {

struct BamNode : public torch::autograd::Function<BamNode> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& c, const at::Tensor& s,
                            bool product, bool residual, bool triton, bool fallback) {
    static const auto op = op_handle("cbam_det::bam_apply");
    torch::jit::Stack stack{x, c, s, product, residual, triton, fallback};
    call_below_autograd(op, stack);
    ctx->save_for_backward({x, c, s});
    ctx->saved_data["flags"] = std::vector<int64_t>{product, residual, triton, fallback};
    return stack[0].toTensor();
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = op_handle("cbam_det::bam_backward");
    const variable_list v = ctx->get_saved_variables();
    const std::vector<int64_t> f = ctx->saved_data["flags"].toIntVector();
    torch::jit::Stack stack{grads[0], v[0], v[1], v[2], f[0] != 0, f[1] != 0, f[2] != 0, f[3] != 0};
    call_below_autograd(op, stack);
    return {stack[0].toTensor(), stack[1].toTensor(), stack[2].toTensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

at::Tensor bam_node(const at::Tensor& x, const at::Tensor& c, const at::Tensor& s, bool product, bool residual,
                    bool triton, bool fallback) {
  return BamNode::apply(x, c, s, product, residual, triton, fallback);
}

}  // namespace cbam_det

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bam_node", &cbam_det::bam_node);
  m.def("bam_apply", &bam_apply);
  m.def("bam_grads", &bam_grads);
  m.def("pointwise_conv", &pointwise_conv);
  m.def("pointwise_conv_input_grad", &pointwise_conv_input_grad);
}

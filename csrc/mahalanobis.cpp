// The squared Mahalanobis distances of the HIST loss as one libtorch autograd Function
// (src/loss/distances.rs has the math; docs/architecture.md, "The loss").
//
// Composed from tensor ops, the distances cost about twenty elementwise passes over the
// [C, D] prototype tensors per step (the normalisation of the means, the variances, and
// autograd's backward of each), and at C = 11,318 those passes, each a fresh allocation,
// took as long as the matrix products themselves. Here the forward writes the variances and
// the scaled means into one [C, 2D] buffer, the backward forms both prototype gradients in
// one pass over the rows, and the four products of the backward become two. On CPU the
// per-row work is a fused loop; other devices (CUDA) take the same formulas as tensor ops.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "ffi_message.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The log-variances are clipped to [0, kMaxLogVar] (relu6) before exp(−·).
constexpr double kMaxLogVar = 6.0;

// Rows per parallel task: about 32 K elements, ATen's own grain.
int64_t row_grain(int64_t dim) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(dim, 1)); }

// Independent partial sums per row reduction: enough for the vectoriser to fill a 512-bit
// register of floats without reassociating any one sum, so every CPU (and every clone
// below) adds in the same order and gets the same bits.
constexpr int kLanes = 16;

// Σ_k a_k b_k, or Σ_k a_k b_k c_k when c is given.
template <typename T>
__attribute__((always_inline)) inline T dot(const T* __restrict a, const T* __restrict b, const T* __restrict c,
                                            int64_t n) {
  T acc[kLanes] = {};
  int64_t k = 0;
  if (c == nullptr) {
    for (; k + kLanes <= n; k += kLanes)
      for (int j = 0; j < kLanes; ++j) acc[j] += a[k + j] * b[k + j];
    for (; k < n; ++k) acc[0] += a[k] * b[k];
  } else {
    for (; k + kLanes <= n; k += kLanes)
      for (int j = 0; j < kLanes; ++j) acc[j] += a[k + j] * b[k + j] * c[k + j];
    for (; k < n; ++k) acc[0] += a[k] * b[k] * c[k];
  }
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
  return acc[0];
}

// Per row c in [begin, end) of the contiguous means m [C, D], with iv = wi[:, D:] already
// written: r_c = 1/sqrt(Σ m² + eps), q_c = Σ m² iv, and w = wi[:, :D] = −2 r_c m iv.
template <typename T>
__attribute__((always_inline)) inline void forward_rows(const T* mp, T* wp, T* rp, T* qp, int64_t begin,
                                                        int64_t end, int64_t dim, double eps) {
  for (int64_t c = begin; c < end; ++c) {
    const T* __restrict mr = mp + c * dim;
    T* __restrict wr = wp + c * 2 * dim;
    const T* __restrict ivr = wr + dim;
    const double rc = 1.0 / std::sqrt(static_cast<double>(dot<T>(mr, mr, nullptr, dim)) + eps);
    rp[c] = static_cast<T>(rc);
    qp[c] = dot<T>(mr, mr, ivr, dim);
    const T scale = static_cast<T>(-2.0 * rc);
#pragma GCC ivdep
    for (int64_t k = 0; k < dim; ++k) wr[k] = mr[k] * ivr[k] * scale;
  }
}

// The prototype gradients of rows [begin, end). With A = Gᵀ x̂ and B = Gᵀ x̂² (ab = [A | B]),
// g_c = Σ_n G_nc and ms = m iv:
//   dL/dr_c = −2 Σ_k ms A + 2 r q g,  dL/dq_c = r² g,
//   dL/dm   = −2 r A iv − r³ dL/dr m + 2 dL/dq m iv,
//   dL/div  = −2 r A m + B + dL/dq m²,
//   dL/dlv  = −dL/div iv where 0 < lv < 6, else 0 (relu6's gradient, as hardtanh's).
template <typename T>
__attribute__((always_inline)) inline void backward_rows(const T* mp, const T* lvp, const T* wp, const T* abp,
                                                         const T* gp, const T* rp, const T* qp, T* dmp, T* dlvp,
                                                         int64_t begin, int64_t end, int64_t dim) {
  const T max_log_var = static_cast<T>(kMaxLogVar);
  for (int64_t c = begin; c < end; ++c) {
    const T* __restrict mr = mp + c * dim;
    const T* __restrict lvr = lvp + c * dim;
    const T* __restrict ivr = wp + c * 2 * dim + dim;
    const T* __restrict ar = abp + c * 2 * dim;
    const T* __restrict br = ar + dim;
    T* __restrict dmr = dmp + c * dim;
    T* __restrict dlvr = dlvp + c * dim;
    const double rc = rp[c], qc = qp[c], gc = gp[c];
    const double d_r = -2.0 * static_cast<double>(dot<T>(mr, ivr, ar, dim)) + 2.0 * rc * qc * gc;
    const double d_q = rc * rc * gc;
    const T c_a = static_cast<T>(-2.0 * rc);
    const T c_m = static_cast<T>(-rc * rc * rc * d_r);
    const T c_ms = static_cast<T>(2.0 * d_q);
    const T c_mm = static_cast<T>(d_q);
    // The rows never overlap; without ivdep GCC gives up on proving it for nine arrays.
    // The select reads a value computed on every lane and `&` has no branch, so the loop
    // vectorises.
#pragma GCC ivdep
    for (int64_t k = 0; k < dim; ++k) {
      const T mk = mr[k], ivk = ivr[k], ak = ar[k];
      dmr[k] = c_a * ak * ivk + c_m * mk + c_ms * mk * ivk;
      const T d_lv = -(c_a * ak * mk + br[k] + c_mm * mk * mk) * ivk;
      const T l = lvr[k];
      dlvr[k] = ((l > T(0)) & (l < max_log_var)) ? d_lv : T(0);
    }
  }
}

// float32, the training dtype, gets one copy per vector width, chosen at load time
// (GCC function multi-versioning); the build targets baseline x86-64 otherwise.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HIST_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HIST_VECTOR_CLONES
#endif

HIST_VECTOR_CLONES void forward_rows_f32(const float* mp, float* wp, float* rp, float* qp, int64_t begin,
                                         int64_t end, int64_t dim, double eps) {
  forward_rows<float>(mp, wp, rp, qp, begin, end, dim, eps);
}

HIST_VECTOR_CLONES void backward_rows_f32(const float* mp, const float* lvp, const float* wp, const float* abp,
                                          const float* gp, const float* rp, const float* qp, float* dmp,
                                          float* dlvp, int64_t begin, int64_t end, int64_t dim) {
  backward_rows<float>(mp, lvp, wp, abp, gp, rp, qp, dmp, dlvp, begin, end, dim);
}

template <typename T>
void fused_forward(const at::Tensor& m, at::Tensor& wi, at::Tensor& r, at::Tensor& q, double eps) {
  const int64_t dim = m.size(1);
  const T* mp = m.data_ptr<T>();
  T* wp = wi.data_ptr<T>();
  T* rp = r.data_ptr<T>();
  T* qp = q.data_ptr<T>();
  at::parallel_for(0, m.size(0), row_grain(dim), [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same_v<T, float>) {
      forward_rows_f32(mp, wp, rp, qp, begin, end, dim, eps);
    } else {
      forward_rows<T>(mp, wp, rp, qp, begin, end, dim, eps);
    }
  });
}

template <typename T>
void fused_backward(const at::Tensor& m, const at::Tensor& lv, const at::Tensor& wi, const at::Tensor& ab,
                    const at::Tensor& g, const at::Tensor& r, const at::Tensor& q, at::Tensor& dm, at::Tensor& dlv) {
  const int64_t dim = m.size(1);
  const T* mp = m.data_ptr<T>();
  const T* lvp = lv.data_ptr<T>();
  const T* wp = wi.data_ptr<T>();
  const T* abp = ab.data_ptr<T>();
  const T* gp = g.data_ptr<T>();
  const T* rp = r.data_ptr<T>();
  const T* qp = q.data_ptr<T>();
  T* dmp = dm.data_ptr<T>();
  T* dlvp = dlv.data_ptr<T>();
  at::parallel_for(0, m.size(0), row_grain(dim), [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same_v<T, float>) {
      backward_rows_f32(mp, lvp, wp, abp, gp, rp, qp, dmp, dlvp, begin, end, dim);
    } else {
      backward_rows<T>(mp, lvp, wp, abp, gp, rp, qp, dmp, dlvp, begin, end, dim);
    }
  });
}

struct Options {
  double eps;
  // The fused CPU loops (true) or the same formulas as tensor ops (false; any device).
  bool fused;
};

struct MahalanobisSq : torch::autograd::Function<MahalanobisSq> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_hat, const at::Tensor& means,
                            const at::Tensor& log_vars, Options opts) {
    TORCH_CHECK(x_hat.dim() == 2 && means.dim() == 2 && x_hat.size(1) == means.size(1) &&
                    log_vars.sizes() == means.sizes(),
                "Mahalanobis distances: expected x_hat [N, D], means and log_vars [C, D]; got ",
                x_hat.sizes(), ", ", means.sizes(), ", ", log_vars.sizes());
    TORCH_CHECK(at::isFloatingType(x_hat.scalar_type()) && means.scalar_type() == x_hat.scalar_type() &&
                    log_vars.scalar_type() == x_hat.scalar_type(),
                "Mahalanobis distances: x_hat, means and log_vars must share one floating dtype; got ",
                x_hat.scalar_type(), ", ", means.scalar_type(), ", ", log_vars.scalar_type());
    TORCH_CHECK(means.device() == x_hat.device() && log_vars.device() == x_hat.device(),
                "Mahalanobis distances: x_hat, means and log_vars must be on one device; got ", x_hat.device(),
                ", ", means.device(), ", ", log_vars.device());
    const bool fused = opts.fused && x_hat.device().is_cpu() &&
                       (x_hat.scalar_type() == at::kFloat || x_hat.scalar_type() == at::kDouble);
    const auto m = means.contiguous();
    const auto lv = log_vars.contiguous();
    const int64_t dim = m.size(1);

    // wi = [w | iv]: one buffer so that the backward's two products with G are one.
    auto wi = at::empty({m.size(0), 2 * dim}, m.options());
    auto w = wi.narrow(1, 0, dim);
    auto iv = wi.narrow(1, dim, dim);
    at::clamp_out(iv, lv, 0.0, kMaxLogVar);
    iv.neg_().exp_();
    at::Tensor r, q;
    if (fused) {
      r = at::empty({m.size(0)}, m.options());
      q = at::empty({m.size(0)}, m.options());
      AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "mahalanobis_forward",
                                 [&] { fused_forward<scalar_t>(m, wi, r, q, opts.eps); });
    } else {
      const auto ms = m * iv;
      r = (m.square().sum(1) + opts.eps).rsqrt();
      q = (m * ms).sum(1);
      at::mul_out(w, ms, (r * -2.0).unsqueeze(1));
    }

    // d = x̂² ivᵀ − 2 r (x̂ msᵀ) + r² q, the middle term as x̂ wᵀ.
    auto d = at::mm(x_hat, w.t());
    d.addmm_(x_hat.square(), iv.t());
    d.add_((r.square() * q).unsqueeze(0));

    // Saved as variables (not saved_data) so that autograd frees them after the backward
    // pass: the [C, 2D] buffer is 46 MB at SOP's size.
    ctx->save_for_backward({x_hat, m, lv, wi, r, q});
    ctx->saved_data["fused"] = fused;
    return d;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // The backward is formed from saved values without autograd history: a graph of it
    // would give wrong second derivatives, so asking for one is an error.
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "Mahalanobis distances: second derivatives are not supported (backward with create_graph)");
    const auto saved = ctx->get_saved_variables();
    const auto& x_hat = saved[0];
    const auto& m = saved[1];
    const auto& lv = saved[2];
    const auto& wi = saved[3];
    const auto& r = saved[4];
    const auto& q = saved[5];
    const bool fused = ctx->saved_data["fused"].toBool();
    const auto grad = grad_outputs[0].contiguous();
    const int64_t dim = m.size(1);
    const auto iv = wi.narrow(1, dim, dim);

    // dL/dx̂ = G w + 2 x̂ ⊙ (G iv), both from one product G·[w | iv].
    at::Tensor dx;
    if (ctx->needs_input_grad(0)) {
      const auto gwi = at::mm(grad, wi);
      dx = at::addcmul(gwi.narrow(1, 0, dim), x_hat, gwi.narrow(1, dim, dim), 2.0);
    }
    at::Tensor dm, dlv;
    if (ctx->needs_input_grad(1) || ctx->needs_input_grad(2)) {
      const auto ab = at::mm(grad.t(), at::cat({x_hat, x_hat.square()}, 1));
      const auto g = grad.sum(0);
      if (fused) {
        dm = at::empty_like(m);
        dlv = at::empty_like(lv);
        AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "mahalanobis_backward",
                                   [&] { fused_backward<scalar_t>(m, lv, wi, ab, g, r, q, dm, dlv); });
      } else {
        const auto a = ab.narrow(1, 0, dim);
        const auto b = ab.narrow(1, dim, dim);
        const auto ms = m * iv;
        const auto d_r = (ms * a).sum(1) * -2.0 + r * q * g * 2.0;
        const auto d_q = r.square() * g;
        const auto c_a = (r * -2.0).unsqueeze(1);
        dm = a * iv * c_a - (r.pow(3) * d_r).unsqueeze(1) * m + (d_q * 2.0).unsqueeze(1) * ms;
        const auto d_iv = a * m * c_a + b + d_q.unsqueeze(1) * m.square();
        const auto inside = lv.gt(0.0).logical_and(lv.lt(kMaxLogVar));
        dlv = at::where(inside, -d_iv * iv, at::zeros({}, lv.options()));
      }
      if (!ctx->needs_input_grad(1)) dm = at::Tensor();
      if (!ctx->needs_input_grad(2)) dlv = at::Tensor();
    }
    return {dx, dm, dlv, at::Tensor()};
  }
};

}  // namespace

// d [N, C]: squared distances of the unit rows x_hat [N, D] to the L2-normalised rows of
// `means` [C, D] under the variances exp(−relu6(log_vars)), differentiable in all three.
// `fused` = 0 forces the tensor-op formulas on CPU too (tests compare the two). On success
// stores a new tensor in *out (the caller owns it) and returns null, otherwise returns an
// error message to free with hist_free_message.
extern "C" char* hist_mahalanobis_sq(const at::Tensor* x_hat, const at::Tensor* means, const at::Tensor* log_vars,
                                     double eps, int32_t fused, at::Tensor** out) {
  try {
    *out = new at::Tensor(MahalanobisSq::apply(*x_hat, *means, *log_vars, Options{eps, fused != 0}));
    return nullptr;
  } catch (const c10::Error& e) {
    return hist_ffi::copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return hist_ffi::copy_message(e.what());
  }
}

// Exact SyncBatchNorm as a libtorch autograd Function (docs/architecture.md, "Sync BN").
//
// tch exposes no custom autograd Function and no tensor hooks, yet an exact SyncBatchNorm
// needs a collective *inside* the backward pass: the per-channel sums of the output
// gradient over every rank. This file holds a Function whose forward and
// backward call back into Rust (src/dist/sync_bn.rs) for the two collectives. The math is
// the Rust side's to document; the statistics are combined as torch.nn.SyncBatchNorm does.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdint>
#include <vector>

#include "ffi_message.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Runs one collective on `input` for the Rust slot and assigns the result to `output`.
// Returns kOk, kFailed (the slot recorded the error; `output` holds the one-rank result so
// the step can finish and report it) or kDetached (no process group attached).
using CollectiveFn = int32_t (*)(void* slot, int32_t op, const at::Tensor* input, at::Tensor* output);
using ReleaseFn = void (*)(void* slot);

constexpr int32_t kAllGather = 0;
constexpr int32_t kAllReduceSum = 1;
constexpr int32_t kDetached = 2;

// Owns one reference to the Rust slot for as long as the autograd graph needs it, which
// may outlive the Rust call that built the graph; on CUDA, backward runs on another thread.
struct SlotHolder : torch::CustomClassHolder {
  SlotHolder(void* slot, CollectiveFn collective, ReleaseFn release)
      : slot_(slot), collective_(collective), release_(release) {}
  ~SlotHolder() override { release_(slot_); }
  SlotHolder(const SlotHolder&) = delete;
  SlotHolder& operator=(const SlotHolder&) = delete;

  at::Tensor run(int32_t op, const at::Tensor& input) const {
    at::Tensor output;
    const int32_t rc = collective_(slot_, op, &input, &output);
    TORCH_CHECK(rc != kDetached,
                "sync BatchNorm: backward ran outside hist::dist::sync_bn::with_sync_bn; run the "
                "forward and the backward pass of a model with model.bn=sync inside it");
    return output;
  }

 private:
  void* slot_;
  CollectiveFn collective_;
  ReleaseFn release_;
};

// The forward's non-differentiable arguments, passed as one value so that autograd does
// not treat the running statistics as inputs.
struct Options {
  at::Tensor running_mean;
  at::Tensor running_var;
  double momentum;
  double eps;
  c10::intrusive_ptr<SlotHolder> slot;
};

// Half-precision inputs keep their statistics in float, as torch's batch_norm does.
at::ScalarType accumulate_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

// Every dimension but the channel dimension 1.
std::vector<int64_t> reduced_dims(const at::Tensor& x) {
  std::vector<int64_t> dims{0};
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  return dims;
}

// A per-channel vector [C] shaped to broadcast against x: [1, C, 1, ...].
at::Tensor per_channel(const at::Tensor& v, const at::Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[1] = v.size(0);
  return v.reshape(shape);
}

// invstd·γ per channel, or invstd alone without an affine weight.
at::Tensor scale(const at::Tensor& invstd, const at::Tensor& weight) {
  return weight.defined() ? invstd * weight.to(invstd.scalar_type()) : invstd;
}

struct SyncBatchNorm : torch::autograd::Function<SyncBatchNorm> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias, Options opts) {
    TORCH_CHECK(x.dim() >= 2, "sync BatchNorm expects [N, C, ...] input, got ", x.sizes());
    const int64_t channels = x.size(1);
    const auto acc = accumulate_type(x.scalar_type());
    const auto xa = x.to(acc);
    const auto dims = reduced_dims(x);
    const int64_t local_count = channels == 0 ? 0 : x.numel() / channels;

    // One row per rank: [count, mean (C), biased variance (C)] of its local positions.
    at::Tensor local_mean, local_var;
    if (local_count > 0) {
      std::tie(local_var, local_mean) = at::var_mean(xa, dims, /*correction=*/0, /*keepdim=*/false);
    } else {
      local_mean = at::zeros({channels}, xa.options());
      local_var = at::zeros({channels}, xa.options());
    }
    const auto count = at::full({1}, static_cast<double>(local_count), xa.options());
    const auto row = at::cat({count, local_mean, local_var}).unsqueeze(0);
    const auto rows = opts.slot->run(kAllGather, row);

    // Chan et al.'s parallel combination, in rank order, identical on every rank.
    const auto counts = rows.select(1, 0).unsqueeze(1);
    const auto means = rows.narrow(1, 1, channels);
    const auto vars = rows.narrow(1, 1 + channels, channels);
    const double total = counts.sum().item<double>();
    TORCH_CHECK(total > 1, "sync BatchNorm: expected more than 1 value per channel when training, got ",
                total, " over all ranks");
    const auto mean = (counts * means).sum(0) / total;
    const auto var = (counts * (vars + (means - mean).square())).sum(0) / total;

    {
      at::NoGradGuard no_grad;
      const double m = opts.momentum;
      opts.running_mean.mul_(1.0 - m).add_(mean.to(opts.running_mean.scalar_type()), m);
      opts.running_var.mul_(1.0 - m).add_((var * (total / (total - 1.0))).to(opts.running_var.scalar_type()), m);
    }

    const auto invstd = (var + opts.eps).rsqrt();
    auto y = (xa - per_channel(mean, xa)) * per_channel(scale(invstd, weight), xa);
    if (bias.defined()) y = y + per_channel(bias.to(acc), xa);

    ctx->save_for_backward({x, weight});
    ctx->saved_data["mean"] = mean;
    ctx->saved_data["invstd"] = invstd;
    ctx->saved_data["total"] = total;
    ctx->saved_data["slot"] = c10::IValue::make_capsule(opts.slot);
    return y.to(x.scalar_type());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& weight = saved[1];
    const auto acc = accumulate_type(x.scalar_type());
    const auto dims = reduced_dims(x);
    const int64_t channels = x.size(1);
    const auto mean = ctx->saved_data["mean"].toTensor();
    const auto invstd = ctx->saved_data["invstd"].toTensor();
    const double total = ctx->saved_data["total"].toDouble();

    const auto xa = x.to(acc);
    const auto g = grad_outputs[0].to(acc);
    const auto xhat = (xa - per_channel(mean, xa)) * per_channel(invstd, xa);
    const auto sum_g = g.sum(dims);
    const auto sum_g_xhat = (g * xhat).sum(dims);

    at::Tensor grad_x;
    if (ctx->needs_input_grad(0)) {
      // Every rank's outputs carry gradient only on that rank, so the sums that couple the
      // positions of a channel must span all ranks.
      const auto slot = c10::static_intrusive_pointer_cast<SlotHolder>(ctx->saved_data["slot"].toCapsule());
      const auto sums = slot->run(kAllReduceSum, at::cat({sum_g, sum_g_xhat}));
      const auto mean_g = sums.narrow(0, 0, channels) / total;
      const auto mean_g_xhat = sums.narrow(0, channels, channels) / total;
      grad_x = ((g - per_channel(mean_g, xa) - xhat * per_channel(mean_g_xhat, xa)) *
                per_channel(scale(invstd, weight), xa))
                   .to(x.scalar_type());
    }
    // The affine gradients stay local: the gradient sync after backward sums them. They take
    // the parameters' dtype (f32 under fp16 autocast, where x is half): per-channel sums
    // of a scaled loss rounded to half would overflow and force skipped steps.
    const auto param_type = weight.defined() ? weight.scalar_type() : x.scalar_type();
    const auto grad_weight = ctx->needs_input_grad(1) ? sum_g_xhat.to(param_type) : at::Tensor();
    const auto grad_bias = ctx->needs_input_grad(2) ? sum_g.to(param_type) : at::Tensor();
    return {grad_x, grad_weight, grad_bias, at::Tensor()};
  }
};

}  // namespace

// Applies sync BatchNorm; on success stores a new tensor in *out (the caller owns it) and
// returns null, otherwise returns an error message to free with hist_free_message.
// `slot` carries one reference that this function takes over, released through `release`.
extern "C" char* hist_sync_bn_forward(const at::Tensor* x, const at::Tensor* weight, const at::Tensor* bias,
                                      const at::Tensor* running_mean, const at::Tensor* running_var,
                                      double momentum, double eps, void* slot, CollectiveFn collective,
                                      ReleaseFn release, at::Tensor** out) {
  try {
    auto holder = c10::make_intrusive<SlotHolder>(slot, collective, release);
    Options opts{*running_mean, *running_var, momentum, eps, std::move(holder)};
    *out = new at::Tensor(SyncBatchNorm::apply(*x, *weight, *bias, std::move(opts)));
    return nullptr;
  } catch (const c10::Error& e) {
    return hist_ffi::copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return hist_ffi::copy_message(e.what());
  }
}

// Makes `dst` refer to the same tensor as `src` (the Rust callback's way to return one).
extern "C" void hist_sync_bn_assign(at::Tensor* dst, const at::Tensor* src) { *dst = *src; }



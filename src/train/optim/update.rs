//! The update rules, op for op as torch 2.11 runs them.
//!
//! tch drops the `alpha`/`value` scalar arguments of `add`, `addcmul` and `addcdiv`, so three
//! torch calls are rewritten with kernels that round identically (checked bit for bit against
//! torch on the DEFAULT, AVX2 and AVX512 CPU kernels, f32 and f64):
//! - `a.add(b, alpha=s)` is one fused multiply-add in ATen's vectorised kernel; `a + b * s`
//!   would round twice. `a.addcmul(b, s_0d)` (a 0-d tensor holding `s`) compiles to the same
//!   fused `b * s + a`.
//! - `a.addcmul_(g, g, value=v)` computes `a + (v*g)*g`; `a.addcmul_(g.mul(v), g)` computes
//!   `a + (1*(g*v))*g`, the same roundings.
//! - `a.addcdiv_(m, d, value=s)` computes `a + (s*m)/d`; `a.addcdiv_(m.mul(s), d)` is the same.
use tch::Tensor;

use super::ParamState;

/// `base ** exp` as Python computes it for floats: C's `pow`. The exponent is hidden from
/// the compiler, which would otherwise turn `pow(x, 0.5)` into `sqrt(x)`, and libm's pow
/// is not guaranteed to round exactly as sqrt does.
fn py_pow(base: f64, exp: f64) -> f64 {
    base.powf(std::hint::black_box(exp))
}

/// `a.add(b, alpha=s)` with torch's single rounding (see the module docs).
fn add_scaled(a: &Tensor, b: &Tensor, s: f64) -> Tensor {
    a.addcmul(b, &Tensor::scalar_tensor(s, (b.kind(), b.device())))
}

/// `a.add_(b, alpha=s)` with torch's single rounding (see the module docs).
fn add_scaled_(a: &mut Tensor, b: &Tensor, s: f64) {
    let _ = a.addcmul_(b, &Tensor::scalar_tensor(s, (b.kind(), b.device())));
}

/// torch 2.11 `_single_tensor_adam` (amsgrad, maximize, capturable, differentiable off).
#[allow(clippy::too_many_arguments)]
pub(super) fn adam_update(
    param: &mut Tensor,
    grad: &Tensor,
    slot: &mut Option<ParamState>,
    lr: f64,
    weight_decay: f64,
    (beta1, beta2): (f64, f64),
    eps: f64,
    decoupled_weight_decay: bool,
) {
    let state = slot.get_or_insert_with(|| ParamState::Adam {
        step: 0.0,
        exp_avg: param.zeros_like(),
        exp_avg_sq: param.zeros_like(),
    });
    let ParamState::Adam {
        step,
        exp_avg,
        exp_avg_sq,
    } = state
    else {
        unreachable!("state kind follows the optimiser kind");
    };
    *step += 1.0;

    let mut grad = grad.shallow_clone();
    if weight_decay != 0.0 {
        if decoupled_weight_decay {
            let _ = param.g_mul_scalar_(1.0 - lr * weight_decay);
        } else {
            grad = add_scaled(&grad, param, weight_decay);
        }
    }

    let _ = exp_avg.lerp_(&grad, 1.0 - beta1);
    let _ = exp_avg_sq
        .g_mul_scalar_(beta2)
        .addcmul_(&grad.g_mul_scalar(1.0 - beta2), &grad);

    let bias_correction1 = 1.0 - py_pow(beta1, *step);
    let bias_correction2 = 1.0 - py_pow(beta2, *step);
    let step_size = lr / bias_correction1;
    let bias_correction2_sqrt = py_pow(bias_correction2, 0.5);

    let denom = exp_avg_sq
        .sqrt()
        .g_div_scalar(bias_correction2_sqrt)
        .g_add_scalar_(eps);
    let _ = param.addcdiv_(&exp_avg.g_mul_scalar(-step_size), &denom);
}

/// torch 2.11 `_single_tensor_sgd` (dampening 0, nesterov and maximize off).
pub(super) fn sgd_update(
    param: &mut Tensor,
    grad: &Tensor,
    slot: &mut Option<ParamState>,
    lr: f64,
    weight_decay: f64,
    momentum: f64,
) {
    let mut grad = grad.shallow_clone();
    if weight_decay != 0.0 {
        grad = add_scaled(&grad, param, weight_decay);
    }
    if momentum != 0.0 {
        grad = match slot {
            None => {
                let buf = grad.detach().copy();
                let shared = buf.shallow_clone();
                *slot = Some(ParamState::Sgd {
                    momentum_buffer: buf,
                });
                shared
            }
            Some(ParamState::Sgd { momentum_buffer }) => {
                // add_ with torch's alpha = 1 - dampening = 1, the default.
                momentum_buffer.g_mul_scalar_(momentum).g_add_(&grad)
            }
            Some(ParamState::Adam { .. }) => unreachable!("state kind follows the optimiser kind"),
        };
    }
    add_scaled_(param, &grad, -lr);
}

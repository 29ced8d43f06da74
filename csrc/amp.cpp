// Mixed precision entry points tch does not expose (docs/backbones.md, "Channels-last and
// mixed precision").
//
// tch 0.24 can switch autocast on for CUDA only and cannot choose its dtype (bf16 vs fp16),
// which needs at::autocast::set_autocast_dtype; GradScaler's unscale kernel
// (at::_amp_foreach_non_finite_check_and_unscale_) takes a tensor list tch does not wrap.
// extern "C" functions: enter and leave an autocast region exactly as Python's
// torch.autocast.__enter__/__exit__ do, unscale a list of gradients, and choose CUDA's
// float32 precision (tch exposes neither fp32_precision switch).
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include <cstdint>
#include <vector>

#include "ffi_message.h"

namespace {

// The Rust side's codes (src/model/autocast.rs), kept independent of c10's enum values.
constexpr int32_t kDeviceCpu = 0;
constexpr int32_t kDeviceCuda = 1;
constexpr int32_t kDtypeBf16 = 0;
constexpr int32_t kDtypeFp16 = 1;

// For codes already checked (or from Rust's own enum): never throws.
at::DeviceType to_type(int32_t code) { return code == kDeviceCpu ? at::kCPU : at::kCUDA; }

at::DeviceType device_type(int32_t code) {
  TORCH_CHECK(code == kDeviceCpu || code == kDeviceCuda, "autocast: unknown device code ", code);
  return to_type(code);
}

at::ScalarType dtype_of(int32_t code) {
  TORCH_CHECK(code == kDtypeBf16 || code == kDtypeFp16, "autocast: unknown dtype code ", code);
  return code == kDtypeBf16 ? at::kBFloat16 : at::kHalf;
}

}  // namespace

// The state an autocast region replaces, handed back to hist_autocast_exit; opaque to Rust
// (`dtype` is c10's ScalarType value, whatever it was).
struct HistAutocastPrevious {
  bool enabled;
  int32_t dtype;
};

// torch.autocast(device, dtype).__enter__: enables autocast for `device` with `dtype`, one
// nesting level deeper (the weight-cast cache keeps its global setting, on by default).
// Returns null or an error message.
extern "C" char* hist_autocast_enter(int32_t device, int32_t dtype, HistAutocastPrevious* previous) {
  try {
    const auto type = device_type(device);
    const auto fast = dtype_of(dtype);
    previous->enabled = at::autocast::is_autocast_enabled(type);
    previous->dtype = static_cast<int32_t>(at::autocast::get_autocast_dtype(type));
    at::autocast::set_autocast_enabled(type, true);
    at::autocast::set_autocast_dtype(type, fast);
    at::autocast::increment_nesting();
    return nullptr;
  } catch (const c10::Error& e) {
    return hist_ffi::copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return hist_ffi::copy_message(e.what());
  }
}

// torch.autocast.__exit__: leaving the outermost region frees the cached weight casts;
// the previous state is restored. Cannot fail for a device that hist_autocast_enter took.
extern "C" void hist_autocast_exit(int32_t device, const HistAutocastPrevious* previous) {
  const auto type = to_type(device);
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(type, previous->enabled);
  at::autocast::set_autocast_dtype(type, static_cast<at::ScalarType>(previous->dtype));
}

// Whether autocast is on for `device` on this thread.
extern "C" bool hist_autocast_is_enabled(int32_t device) {
  return at::autocast::is_autocast_enabled(to_type(device));
}

// GradScaler.unscale_'s kernel: multiplies every gradient by `inv_scale` (a 1-element float
// tensor) in place and sets `found_inf` (a 1-element float tensor, zero on entry) to 1 if any
// gradient holds an inf or a NaN. Returns null or an error message.
extern "C" char* hist_amp_unscale(const at::Tensor* const* grads, size_t count, at::Tensor* found_inf,
                                  const at::Tensor* inv_scale) {
  try {
    std::vector<at::Tensor> list;
    list.reserve(count);
    for (size_t i = 0; i < count; ++i) list.push_back(*grads[i]);
    at::_amp_foreach_non_finite_check_and_unscale_(list, *found_inf, *inv_scale);
    return nullptr;
  } catch (const c10::Error& e) {
    return hist_ffi::copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return hist_ffi::copy_message(e.what());
  }
}

// torch.backends.cudnn.allow_tf32 = tf32_convolutions and
// torch.backends.cuda.matmul.allow_tf32 = False (PyTorch's defaults: True and False).
// Matrix products stay IEEE even under TORCH_ALLOW_TF32_CUBLAS_OVERRIDE: the evaluation's
// exact ranking bounds float32 rounding. The legacy setters, because in libtorch 2.11 they
// keep both the legacy flags and the per-op fp32_precision map in step; setting the map
// alone leaves the legacy flags behind, and libtorch's consistency check then throws in
// any caller that asks without naming an op. Returns null or an error message.
extern "C" char* hist_set_cuda_float32_precision(bool tf32_convolutions) {
  try {
    auto& context = at::globalContext();
    context.setAllowTF32CuDNN(tf32_convolutions);
    context.setAllowTF32CuBLAS(false);
    return nullptr;
  } catch (const c10::Error& e) {
    return hist_ffi::copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return hist_ffi::copy_message(e.what());
  }
}

//! The channels-last (NHWC) memory format (`model.channels_last`): same shapes and values,
//! strides (H·W·C, 1, W·C, C), which cuDNN's Tensor Core convolutions read without the
//! transposes they need around NCHW tensors. tch 0.24 has no memory-format argument, so the
//! layout is made by permuting to NHWC, compacting and permuting back: the strides torch's
//! `contiguous(memory_format=torch.channels_last)` produces.
use tch::nn::VarStore;
use tch::Tensor;

/// `t` [N, C, H, W] laid out channels-last (a copy unless it already is).
pub fn to_channels_last(t: &Tensor) -> Tensor {
    if is_channels_last(t) {
        return t.shallow_clone();
    }
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// True when `t` is 4-D and laid out channels-last; as in libtorch, the stride of a
/// dimension of size 1 does not matter.
pub fn is_channels_last(t: &Tensor) -> bool {
    if t.dim() != 4 {
        return false;
    }
    let (size, stride) = (t.size(), t.stride());
    let (c, h, w) = (size[1], size[2], size[3]);
    let expected = [h * w * c, 1, w * c, c];
    (0..4).all(|d| size[d] == 1 || stride[d] == expected[d])
}

/// Re-lays every 4-D variable of `vs` whose name starts with `prefix` (the convolution
/// weights) channels-last, in place: each stays the same tensor, so the layers and the
/// optimiser that hold it see the new layout, and autograd gives it gradients of the same
/// layout. Returns how many were converted.
pub fn variables_to_channels_last(vs: &VarStore, prefix: &str) -> usize {
    let _guard = tch::no_grad_guard();
    let mut converted = 0;
    for (name, mut var) in vs.variables() {
        if name.starts_with(prefix) && var.dim() == 4 {
            let data = to_channels_last(&var.detach());
            var.set_data(&data);
            converted += 1;
        }
    }
    converted
}

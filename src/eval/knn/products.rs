//! Blocks of similarity products: computed on the tensors' device into one reused
//! buffer, and read on the host (through a second reused buffer when the device is a
//! GPU), so a search allocates its product memory once per worker.
use tch::{Device, Kind, Tensor};

use super::scan::Element;
use crate::error::{HistError, Result};

/// One worker's product buffer on the device, and its host mirror for a GPU.
pub(super) struct ProductBuffer {
    device: Tensor,
    host: Option<Tensor>,
}

impl ProductBuffer {
    /// Room for `elements` products of `kind` on `device`.
    pub(super) fn new(elements: usize, kind: Kind, device: Device) -> Result<ProductBuffer> {
        let on_device = Tensor::f_empty([elements as i64], (kind, device))?;
        let host = (device != Device::Cpu).then(|| Tensor::f_empty([elements as i64], (kind, Device::Cpu))).transpose()?;
        Ok(ProductBuffer { device: on_device, host })
    }

    /// `a` [m, D] · `b` [D, w] as a contiguous host tensor [m, w] in the buffer; valid
    /// until the next call.
    pub(super) fn product(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (m, w) = (a.size()[0], b.size()[1]);
        let out = self.device.narrow(0, 0, m * w).view([m, w]);
        // Written into `out`; the returned handle is the same tensor.
        let _ = a.f_mm_out(&out, b)?;
        Ok(match &self.host {
            None => out,
            Some(h) => {
                let mut on_host = h.narrow(0, 0, m * w).view([m, w]);
                on_host.f_copy_(&out)?;
                on_host
            }
        })
    }
}

/// The elements of a contiguous host tensor of `E`'s kind, borrowed.
pub(super) fn host_elements<E: Element>(t: &Tensor) -> Result<&[E]> {
    if t.device() != Device::Cpu || t.kind() != E::KIND || !t.is_contiguous() {
        return Err(HistError::input("similarities", format!("internal: expected contiguous host {:?}, got {:?} on {:?}", E::KIND, t.kind(), t.device())));
    }
    // SAFETY: a contiguous CPU tensor of E's kind holds numel() initialised elements of E,
    // aligned for E, at data_ptr(); the slice borrows `t`, and no other handle to this
    // storage writes to it while the slice lives (a buffer is only written by the next
    // product, after the previous product's slices are gone).
    Ok(unsafe { std::slice::from_raw_parts(t.data_ptr() as *const E, t.numel()) })
}

//! `hist inspect-loss`: the HIST loss and its gradients on tensors from a safetensors
//! file, so any other implementation can be checked against ours (docs/inspect-loss.md).
use std::collections::HashMap;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{HistError, Result};
use crate::loss::hgnn::HgnnWeights;
use crate::loss::{hist_loss, HistHyper, HistTensors};

/// Floating tensors that receive a `grad.<name>` output, in output order.
pub const DIFFERENTIABLE: [&str; 9] = [
    "embeddings", "means", "log_vars", "hgnn.w1", "hgnn.b1", "hgnn.bn_weight", "hgnn.bn_bias",
    "hgnn.w2", "hgnn.b2",
];

/// Reads `input`, computes the loss, writes `output`.
pub fn run(input: &Path, output: &Path) -> Result<()> {
    let tensors = Tensor::read_safetensors(input).map_err(|e| HistError::Io {
        path: input.to_path_buf(),
        message: format!("cannot read as safetensors: {e}"),
    })?;
    let mut named: HashMap<String, Tensor> = tensors.into_iter().collect();
    let results = compute(&mut named)?;
    let refs: Vec<(&str, &Tensor)> = results.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, output).map_err(|e| HistError::Io {
        path: output.to_path_buf(),
        message: format!("cannot write: {e}"),
    })?;
    Ok(())
}

fn take(named: &mut HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    named.remove(name).ok_or_else(|| HistError::input(name, "missing from the input file"))
}

fn scalar(named: &mut HashMap<String, Tensor>, name: &str) -> Result<f64> {
    let t = take(named, name)?;
    if t.numel() != 1 || !t.is_floating_point() {
        return Err(HistError::input(name, format!("must be one float (shape [] or [1]), got {:?} {:?}", t.kind(), t.size())));
    }
    Ok(t.double_value(&[]))
}

fn expect_shape(name: &str, t: &Tensor, want: &[i64], what: &str) -> Result<()> {
    if t.size() != want {
        return Err(HistError::input(name, format!("expected shape {want:?} ({what}), got {:?}", t.size())));
    }
    Ok(())
}

/// Validates and runs; returns the output tensors in write order.
pub fn compute(named: &mut HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>> {
    let tau = scalar(named, "tau")?;
    let alpha = scalar(named, "alpha")?;
    let ls = scalar(named, "ls")?;
    let labels = take(named, "labels")?;
    let mut inputs = Vec::new();
    for name in DIFFERENTIABLE.iter() {
        inputs.push((name.to_string(), take(named, name)?));
    }
    if let Some(extra) = named.keys().next() {
        return Err(HistError::input(extra, "unexpected tensor (see docs/inspect-loss.md for the names)"));
    }
    let kind = inputs[0].1.kind();
    if kind != Kind::Float && kind != Kind::Double {
        return Err(HistError::input("embeddings", format!("must be f32 or f64, got {kind:?}")));
    }
    for (name, t) in &inputs {
        if t.kind() != kind {
            return Err(HistError::input(name, format!("dtype {:?} differs from embeddings' {kind:?}", t.kind())));
        }
    }
    let x = &inputs[0].1;
    if x.dim() != 2 {
        return Err(HistError::input("embeddings", format!("expected [N, D], got {:?}", x.size())));
    }
    let (n, d) = (x.size()[0], x.size()[1]);
    if n < 2 {
        // BatchNorm1d in training mode needs two samples (PyTorch refuses one as well).
        return Err(HistError::input("embeddings", format!("needs N >= 2 rows for BatchNorm1d batch statistics, got {n}")));
    }
    let c = inputs[1].1.size().first().copied().unwrap_or(0);
    let h = inputs[3].1.size().first().copied().unwrap_or(0);
    let want: [(&[i64], &str); 9] = [
        (&[n, d], "N, D"), (&[c, d], "C, D"), (&[c, d], "C, D; C from the rows of means"), (&[h, d], "H, D"), (&[h], "H"),
        (&[h], "H"), (&[h], "H"), (&[c, h], "C, H; C from means, H from hgnn.w1"), (&[c], "C from the rows of means"),
    ];
    for ((name, t), (shape, what)) in inputs.iter().zip(want) {
        expect_shape(name, t, shape, what)?;
    }
    if labels.kind() != Kind::Int64 || labels.size() != [n] {
        return Err(HistError::input("labels", format!("expected int64 [{n}], got {:?} {:?}", labels.kind(), labels.size())));
    }
    if n > 0 && (labels.min().int64_value(&[]) < 0 || labels.max().int64_value(&[]) >= c) {
        return Err(HistError::input("labels", format!("values must lie in [0, {c}) (C = rows of means)")));
    }
    if tau <= 0.0 || alpha <= 0.0 {
        return Err(HistError::input("tau/alpha", format!("must be > 0 (got tau {tau}, alpha {alpha})")));
    }

    let leaves: Vec<Tensor> = inputs.iter().map(|(_, t)| t.detach().set_requires_grad(true)).collect();
    let hgnn = HgnnWeights {
        w1: &leaves[3], b1: &leaves[4], bn_weight: &leaves[5], bn_bias: &leaves[6],
        bn_running: None, w2: &leaves[7], b2: &leaves[8],
    };
    let tensors = HistTensors { means: &leaves[1], log_vars: &leaves[2], hgnn };
    let terms = hist_loss(&leaves[0], &labels, tensors, HistHyper { tau, alpha, ls });
    terms.total.backward();

    let mut out = vec![
        ("loss".to_string(), terms.total.detach().reshape([1])),
        ("loss_ds".to_string(), terms.ds.detach().reshape([1])),
        ("loss_ce".to_string(), terms.ce.detach().reshape([1])),
    ];
    for ((name, _), leaf) in inputs.iter().zip(&leaves) {
        let g = leaf.grad();
        let g = if g.defined() { g } else { leaf.zeros_like() };
        out.push((format!("grad.{name}"), g.contiguous()));
    }
    Ok(out)
}

#!/usr/bin/env python3
"""Independent PyTorch reference of the HIST loss (Lim et al., CVPR 2022), used by
tests/hist_loss_reference.rs to hold `hist inspect-loss` to it.

Written from the math (docs: design §2) in the style of the authors' code
(github.com/ljin0429/HIST, code/hist.py): the Mahalanobis distances materialise the
N×C×D difference, H is built with an explicit one-hot mask, and the propagation matrix G
is a product of dense diagonal matrices. Gradients come from autograd.

  gen   --seed S --n N --c C --d D --hidden H --dtype f64|f32 OUT.safetensors
  check IN.safetensors OURS.safetensors      -> JSON {output name: max relative error}

The relative error of an output is max|ours − ref| / max(max|ref|, tiny); the reference
is always evaluated in float64, whatever the input dtype.
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.checkpoint import checkpoint

# Floating inputs that get a `grad.<name>` output.
DIFFERENTIABLE = ["embeddings", "means", "log_vars", "hgnn.w1", "hgnn.b1",
                  "hgnn.bn_weight", "hgnn.bn_bias", "hgnn.w2", "hgnn.b2"]
SCALARS = ["tau", "alpha", "ls"]
TINY = 1e-300


def l2_norm(x):
    """The authors' utils.l2_norm: x / sqrt(Σ x² + 1e-12), row-wise."""
    return x / torch.sqrt((x * x).sum(dim=1, keepdim=True) + 1e-12)


def _mahalanobis_block(x, means, log_vars):
    # As the authors' pairwise_mahalanobis: [n, C, D] difference, divided by the variance.
    diff = x.unsqueeze(1).expand(-1, means.size(0), -1) - means.unsqueeze(0).expand(x.size(0), -1, -1)
    covs = torch.exp(F.relu6(log_vars)).unsqueeze(0)
    return torch.div(diff.pow(2), covs).sum(dim=-1)


def pairwise_mahalanobis(x, means, log_vars, max_block=8_000_000):
    """d[i, c] = Σ_k (x_ik − m_ck)² / exp(relu6(v_ck)), materialising N×C×D (in row
    blocks under activation checkpointing, so the largest shapes stay within memory)."""
    n, c, d = x.size(0), means.size(0), means.size(1)
    rows = max(1, max_block // max(1, c * d))
    if rows >= n:
        return _mahalanobis_block(x, means, log_vars)
    parts = [checkpoint(_mahalanobis_block, x[i:i + rows], means, log_vars, use_reentrant=False)
             for i in range(0, n, rows)]
    return torch.cat(parts, dim=0)


def compute_g(h):
    """The authors' HGNN.compute_G: dense diagonal matrices, unit edge weights."""
    n_edge = h.size(1)
    we = torch.ones(n_edge, dtype=h.dtype)
    dv = (h * we).sum(dim=1)
    de = h.sum(dim=0)
    w_e = torch.diag(we)
    inv_dv_half = torch.diag(torch.pow(dv, -0.5))
    inv_de = torch.diag(torch.pow(de, -1))
    return torch.linalg.multi_dot([inv_dv_half, h, w_e, inv_de, h.t(), inv_dv_half])


def hist_loss(t, tau, alpha, ls):
    """Returns (loss, loss_ds, loss_ce) for the dict of float64 leaf tensors `t`."""
    x, y = t["embeddings"], t["labels"]
    num_classes = t["means"].size(0)
    x_hat = l2_norm(x)
    m_hat = l2_norm(t["means"])
    dist = pairwise_mahalanobis(x_hat, m_hat, t["log_vars"])  # [N, C]

    one_hot = F.one_hot(y, num_classes).to(x.dtype)  # [N, C]
    # Distribution loss: mean_i −log softmax_c(−τ d_ic)[y_i].
    loss_ds = -(F.log_softmax(-tau * dist, dim=1) * one_hot).sum(dim=1).mean()

    # Hypergraph: classes in the batch (increasing), H = 1 on positives, exp(−α d) else.
    in_batch = torch.nonzero(one_hot.sum(dim=0) != 0).squeeze(dim=1)
    pos = one_hot[:, in_batch]
    h = pos + torch.exp(-alpha * dist[:, in_batch]) * (1 - pos)
    g = compute_g(h)

    # HGNN on the raw embeddings.
    z = g.matmul(F.linear(x, t["hgnn.w1"], t["hgnn.b1"]))
    z = F.batch_norm(z, None, None, t["hgnn.bn_weight"], t["hgnn.bn_bias"],
                     training=True, momentum=0.1, eps=1e-5)
    z = F.leaky_relu(z, 0.1)
    logits = g.matmul(F.linear(z, t["hgnn.w2"], t["hgnn.b2"]))
    loss_ce = F.cross_entropy(logits, y)
    return loss_ds + ls * loss_ce, loss_ds, loss_ce


def draw_labels(gen, n, c):
    """Labels where some classes repeat and (when possible) some appear once: E distinct
    classes each get one sample; the remaining N − E samples go to the first half of them."""
    e = min(c, max(2, (2 * n) // 3), n)
    classes = torch.randperm(c, generator=gen)[:e]
    labels = [classes[i] for i in range(e)]
    repeaters = classes[:max(1, e // 2)]
    extra = torch.randint(0, repeaters.numel(), (n - e,), generator=gen)
    labels += [repeaters[i] for i in extra]
    labels = torch.stack(labels) if labels else torch.zeros(0, dtype=torch.int64)
    return labels[torch.randperm(n, generator=gen)].to(torch.int64)


def cmd_gen(a):
    gen = torch.Generator().manual_seed(a.seed)
    dt = {"f64": torch.float64, "f32": torch.float32}[a.dtype]
    n, c, d, hid = a.n, a.c, a.d, a.hidden

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def unif(bound, *shape):
        return (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound

    labels = draw_labels(gen, n, c)
    means = randn(c, d) * (2.0 / c) ** 0.5  # Kaiming-normal fan-out scale
    log_vars = randn(c, d) * 2.0  # relu6 clips below 0 and (a few) above 6
    log_vars.view(-1)[: min(3, c * d)] = torch.tensor([7.5, -1.5, 6.8], dtype=torch.float64)[: min(3, c * d)]
    # Embeddings pulled towards their class mean direction, not unit norm (LayerNorm-like
    # scale ~ sqrt(D)), with per-row scale variation.
    direction = means[labels] / means[labels].norm(dim=1, keepdim=True)
    x = direction * (d ** 0.5) * 0.3 + randn(n, d)
    x = x * (0.5 + torch.rand(n, 1, generator=gen, dtype=torch.float64))
    pick = lambda xs: xs[int(torch.randint(0, len(xs), (1,), generator=gen))]
    t = {
        "embeddings": x,
        "labels": labels,
        "means": means,
        "log_vars": log_vars,
        "hgnn.w1": unif(d ** -0.5, hid, d),
        "hgnn.b1": unif(d ** -0.5, hid),
        "hgnn.bn_weight": 1 + 0.1 * randn(hid),
        "hgnn.bn_bias": 0.1 * randn(hid),
        "hgnn.w2": unif(hid ** -0.5, c, hid),
        "hgnn.b2": unif(hid ** -0.5, c),
        "tau": torch.tensor(pick([16.0, 32.0]), dtype=torch.float64),
        "alpha": torch.tensor([pick([0.9, 1.1, 2.0])], dtype=torch.float64),  # shape [1]
        "ls": torch.tensor(pick([0.5, 1.0, 1.5]), dtype=torch.float64),
    }
    t = {k: (v.to(dt).contiguous() if v.is_floating_point() else v.contiguous()) for k, v in t.items()}
    save_file(t, a.out)


def reference(inputs, dtype=torch.float64):
    """Loss terms and gradients (in `dtype`), as a dict of output name -> tensor."""
    scal = {k: float(inputs[k].reshape(-1)[0]) for k in SCALARS}
    leaves = {k: inputs[k].to(dtype).detach().requires_grad_(True) for k in DIFFERENTIABLE}
    leaves["labels"] = inputs["labels"].to(torch.int64)
    loss, ds, ce = hist_loss(leaves, scal["tau"], scal["alpha"], scal["ls"])
    grads = torch.autograd.grad(loss, [leaves[k] for k in DIFFERENTIABLE], allow_unused=True)
    out = {"loss": loss.detach().reshape(1), "loss_ds": ds.detach().reshape(1),
           "loss_ce": ce.detach().reshape(1)}
    for k, g in zip(DIFFERENTIABLE, grads):
        out["grad." + k] = torch.zeros_like(leaves[k]) if g is None else g
    return out


def rel_error(got, ref):
    """max|got − ref| / max(max|ref|, tiny), in float64."""
    if ref.numel() == 0:
        return 0.0
    got = got.to(torch.float64)
    if not torch.isfinite(got).all():
        return float("inf")
    return float((got - ref).abs().max()) / max(float(ref.abs().max()), TINY)


def cmd_check(a):
    inputs = load_file(a.input)
    ours = load_file(a.ours)
    ref = reference(inputs)
    in_dtype = inputs["embeddings"].dtype
    report, problems = {}, []
    for name, r in ref.items():
        if name not in ours:
            problems.append(f"{name}: missing from our output")
            continue
        o = ours[name]
        if o.dtype != in_dtype:
            problems.append(f"{name}: dtype {o.dtype}, input dtype {in_dtype}")
        if tuple(o.shape) != tuple(r.shape):
            problems.append(f"{name}: shape {tuple(o.shape)}, reference {tuple(r.shape)}")
            continue
        report[name] = rel_error(o, r)
    extra = sorted(set(ours) - set(ref))
    if extra:
        problems.append(f"unexpected outputs {extra}")
    # For lower-precision inputs, the same reference evaluated in that precision shows
    # how well-conditioned each output is (the bias before BatchNorm, grad.hgnn.b1, is a
    # near-cancellation: BatchNorm removes all but the non-uniform part of G·1·b1ᵀ).
    baseline = {}
    if in_dtype != torch.float64:
        same = reference(inputs, in_dtype)
        baseline = {name: rel_error(same[name], r) for name, r in ref.items()}
    json.dump({"errors": report, "problems": problems, "torch_same_dtype_errors": baseline,
               "loss": float(ref["loss"]), "loss_ds": float(ref["loss_ds"]),
               "loss_ce": float(ref["loss_ce"])}, sys.stdout)
    print()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen", help="write random inputs for inspect-loss")
    g.add_argument("--seed", type=int, required=True)
    for k in ("n", "c", "d", "hidden"):
        g.add_argument("--" + k, type=int, required=True)
    g.add_argument("--dtype", choices=["f64", "f32"], default="f64")
    g.add_argument("out")
    c = sub.add_parser("check", help="compare inspect-loss output with the reference")
    c.add_argument("input")
    c.add_argument("ours")
    a = p.parse_args()
    torch.set_num_threads(1)
    {"gen": cmd_gen, "check": cmd_check}[a.cmd](a)


if __name__ == "__main__":
    main()

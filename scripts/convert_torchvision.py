#!/usr/bin/env python3
"""Writes ImageNet backbone weights as the safetensors file `model.pretrained` reads.

Run it where the weights can be had (torchvision downloads them on first use):

  python scripts/convert_torchvision.py --arch resnet50 --out resnet50_imagenet.safetensors
  python scripts/convert_torchvision.py --arch resnet50 --weights resnet50-19c8e357.pth --out r50.safetensors
  python scripts/convert_torchvision.py --arch bn_inception --pth bn_inception-52deb4733.pth \
      --out bn_inception_imagenet.safetensors

Names stay torchvision's (ResNet-50) or pretrained-models' (BN-Inception); the classifier
(`fc.*`, `last_linear.*`) and BatchNorm's `num_batches_tracked` are dropped. For tests,
`--arch resnet50 --random-init SEED` writes a randomly initialised ResNet-50 whose
BatchNorm affine parameters and running statistics are randomised as well.
Needs torch, torchvision and safetensors (all in the project's venv, docs/setup.md).
"""
import argparse
import os
import sys

import torch

DROPPED_PREFIXES = ("fc.", "last_linear.")
DROPPED_SUFFIX = "num_batches_tracked"


def resnet50_state(weights):
    import torchvision

    if weights is None:
        weights = "IMAGENET1K_V1"
    if os.path.isfile(weights):
        return load_state_file(weights)
    try:
        model = torchvision.models.resnet50(weights=weights)
    except (KeyError, ValueError) as e:
        sys.exit(f"--weights {weights!r}: not a torchvision weight name (IMAGENET1K_V1, IMAGENET1K_V2) nor a file ({e})")
    return model.state_dict()


def load_state_file(path):
    if not os.path.isfile(path):
        sys.exit(f"{path}: no such file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    # Training checkpoints wrap the weights; DataParallel prefixes every name with `module.`.
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        sys.exit(f"{path}: expected a state dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def bn_inception_state(pth):
    state = load_state_file(pth)
    # The Caffe-converted file stores BatchNorm vectors as [1, C]; the network wants [C]
    # (Proxy-Anchor and HIST squeeze them the same way when loading).
    return {k: v.squeeze(0) if v.dim() >= 2 and v.size(0) == 1 else v for k, v in state.items()}


def randomise_batch_norms(model, seed):
    """Random affine parameters, and running statistics taken from a random batch then
    perturbed: activations stay in a sensible range while every statistic matters."""
    import torch.nn as nn

    gen = torch.Generator().manual_seed(seed + 1)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in bns]
    with torch.no_grad():
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        model.train()
        model(torch.randn(4, 3, 64, 64, generator=gen))
        for m, momentum in zip(bns, momenta):
            m.running_mean.add_(torch.randn(m.running_mean.shape, generator=gen) * 0.1 * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.momentum = momentum
    model.eval()


def random_resnet50_state(seed):
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet50(weights=None)
    randomise_batch_norms(model, seed)
    return model.state_dict()


def export(state, out):
    from safetensors.torch import save_file

    kept = {k: v.detach().contiguous() for k, v in state.items() if not k.startswith(DROPPED_PREFIXES) and not k.endswith(DROPPED_SUFFIX)}
    save_file(kept, out)
    dropped = len(state) - len(kept)
    params = sum(v.numel() for v in kept.values())
    print(f"wrote {out}: {len(kept)} tensors ({params} values), dropped {dropped} (classifier, num_batches_tracked)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, choices=["resnet50", "bn_inception"])
    p.add_argument("--weights", help="resnet50: torchvision weight name (default IMAGENET1K_V1) or a .pth state dict")
    p.add_argument("--pth", help="bn_inception: the pretrained-models checkpoint, e.g. bn_inception-52deb4733.pth")
    p.add_argument("--random-init", type=int, metavar="SEED", help="resnet50: random weights and BN statistics (tests)")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    a = p.parse_args()

    if a.arch == "resnet50":
        if a.pth:
            sys.exit("--pth is for --arch bn_inception; use --weights for resnet50")
        if a.random_init is not None and a.weights:
            sys.exit("--random-init and --weights exclude each other")
        state = random_resnet50_state(a.random_init) if a.random_init is not None else resnet50_state(a.weights)
    else:
        if a.random_init is not None or a.weights:
            sys.exit("--arch bn_inception takes only --pth (random BN-Inception weights come from tests/reference/backbone_ref.py)")
        if not a.pth:
            sys.exit("--arch bn_inception needs --pth bn_inception-52deb4733.pth (from Cadene's pretrained-models)")
        state = bn_inception_state(a.pth)
    export(state, a.out)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Reference backbones for tests/model_backbones.rs.

  backbone_ref.py resnet50 --dir DIR --seed S --size 224 --batch 2
      Runs scripts/convert_torchvision.py --arch resnet50 --random-init S to write
      DIR/weights.safetensors, loads that file back into torchvision's resnet50 (so the
      names are exactly torchvision's), and writes DIR/case.safetensors with `input`
      [B,3,size,size] and `pooled` = GAP + GMP of layer4's feature map.

  backbone_ref.py bn_inception --dir DIR --seed S --size 224 --batch 2
      Builds BN-Inception from the pretrained-models layout (written here, independently
      of the Rust code), random weights and BatchNorm statistics, saves its state dict the
      way that port's file is laid out (BatchNorm vectors as [1, C], with last_linear) to
      DIR/bn_inception.pth, converts it with scripts/convert_torchvision.py --arch
      bn_inception to DIR/weights.safetensors, and writes DIR/case.safetensors with
      `input`, `pooled` and `map_shape` (the feature map's shape).
"""
import argparse
import importlib.util
import os
import subprocess
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONVERT = os.path.join(ROOT, "scripts", "convert_torchvision.py")


def convert_module():
    spec = importlib.util.spec_from_file_location("convert_torchvision", CONVERT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_convert(*args):
    subprocess.run([sys.executable, CONVERT, *args], check=True, stdout=subprocess.DEVNULL)


def pooled(feature_map):
    return feature_map.mean(dim=(2, 3)) + feature_map.amax(dim=(2, 3))


def load_safetensors(path):
    from safetensors.torch import load_file

    return load_file(path)


def resnet50_case(a):
    import torchvision

    weights = os.path.join(a.dir, "weights.safetensors")
    run_convert("--arch", "resnet50", "--random-init", str(a.seed), "--out", weights)
    model = torchvision.models.resnet50(weights=None)
    missing, unexpected = model.load_state_dict(load_safetensors(weights), strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith("fc.") or k.endswith("num_batches_tracked") for k in missing), missing
    model.eval()
    trunk = nn.Sequential(*list(model.children())[:-2])  # up to layer4: no avgpool, no fc
    x = torch.randn(a.batch, 3, a.size, a.size, generator=torch.Generator().manual_seed(a.seed + 7))
    with torch.no_grad():
        fmap = trunk(x)
    save_case(a.dir, x, fmap)


class ConvBnRelu(nn.Module):
    """conv (bias) -> BatchNorm2d(eps 1e-5, momentum 0.9) -> ReLU, as the port uses."""

    def __init__(self, c_in, c_out, k, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.9)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


# (name, in, 1x1, 3x3 reduce, 3x3, double reduce, double, pool kind, pool proj);
# 1x1 = 0 and proj = 0 mark the two modules that halve the resolution.
INCEPTION = [
    ("3a", 192, 64, 64, 64, 64, 96, "avg", 32),
    ("3b", 256, 64, 64, 96, 64, 96, "avg", 64),
    ("3c", 320, 0, 128, 160, 64, 96, "max_s2", 0),
    ("4a", 576, 224, 64, 96, 96, 128, "avg", 128),
    ("4b", 576, 192, 96, 128, 96, 128, "avg", 128),
    ("4c", 576, 160, 128, 160, 128, 160, "avg", 128),
    ("4d", 608, 96, 128, 192, 160, 192, "avg", 128),
    ("4e", 608, 0, 128, 192, 192, 256, "max_s2", 0),
    ("5a", 1056, 352, 192, 320, 160, 224, "avg", 128),
    ("5b", 1024, 352, 192, 320, 192, 224, "max", 128),
]


class BNInceptionRef(nn.Module):
    """BN-Inception with the pretrained-models port's module names (flat attributes)."""

    def __init__(self):
        super().__init__()
        self.units = {}
        self._unit("conv1_7x7_s2", 3, 64, 7, 2)
        self._unit("conv2_3x3_reduce", 64, 64, 1)
        self._unit("conv2_3x3", 64, 192, 3)
        for name, c_in, c1, r3, c3, rd, dd, pool, proj in INCEPTION:
            s = 2 if pool == "max_s2" else 1
            p = f"inception_{name}_"
            if c1:
                self._unit(p + "1x1", c_in, c1, 1)
            self._unit(p + "3x3_reduce", c_in, r3, 1)
            self._unit(p + "3x3", r3, c3, 3, s)
            self._unit(p + "double_3x3_reduce", c_in, rd, 1)
            self._unit(p + "double_3x3_1", rd, dd, 3)
            self._unit(p + "double_3x3_2", dd, dd, 3, s)
            if proj:
                self._unit(p + "pool_proj", c_in, proj, 1)
        self.last_linear = nn.Linear(1024, 1000)

    def _unit(self, name, c_in, c_out, k, stride=1):
        u = ConvBnRelu(c_in, c_out, k, stride)
        # Register conv and BN directly under the port's flat names.
        setattr(self, name, u.conv)
        setattr(self, name + "_bn", u.bn)
        self.units[name] = u

    def _run(self, name, x):
        return self.units[name](x)

    def features(self, x):
        x = self._run("conv1_7x7_s2", x)
        x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        x = self._run("conv2_3x3", self._run("conv2_3x3_reduce", x))
        x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        for name, _, c1, _, _, _, _, pool, proj in INCEPTION:
            p = f"inception_{name}_"
            outs = []
            if c1:
                outs.append(self._run(p + "1x1", x))
            outs.append(self._run(p + "3x3", self._run(p + "3x3_reduce", x)))
            d = self._run(p + "double_3x3_reduce", x)
            outs.append(self._run(p + "double_3x3_2", self._run(p + "double_3x3_1", d)))
            if pool == "avg":
                pooled_in = F.avg_pool2d(x, 3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
            elif pool == "max":
                pooled_in = F.max_pool2d(x, 3, stride=1, padding=1, ceil_mode=True)
            else:
                pooled_in = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
            outs.append(self._run(p + "pool_proj", pooled_in) if proj else pooled_in)
            x = torch.cat(outs, 1)
        return x

    def forward(self, x):
        return self.features(x)


def bn_inception_case(a):
    torch.manual_seed(a.seed)
    model = BNInceptionRef()
    convert_module().randomise_batch_norms(model, a.seed)
    state = model.state_dict()
    # The port's file: BatchNorm vectors stored as [1, C] (the converter squeezes them).
    caffe_layout = {k: (v.unsqueeze(0) if ("_bn." in k and v.dim() == 1) else v) for k, v in state.items()}
    pth = os.path.join(a.dir, "bn_inception.pth")
    torch.save(caffe_layout, pth)
    weights = os.path.join(a.dir, "weights.safetensors")
    run_convert("--arch", "bn_inception", "--pth", pth, "--out", weights)
    x = torch.randn(a.batch, 3, a.size, a.size, generator=torch.Generator().manual_seed(a.seed + 7))
    with torch.no_grad():
        fmap = model(x)
    save_case(a.dir, x, fmap)


def save_case(directory, x, fmap):
    out = {
        "input": x.contiguous(),
        "pooled": pooled(fmap).contiguous(),
        "map_shape": torch.tensor(list(fmap.shape), dtype=torch.int64),
    }
    save_file(out, os.path.join(directory, "case.safetensors"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("arch", choices=["resnet50", "bn_inception"])
    p.add_argument("--dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    {"resnet50": resnet50_case, "bn_inception": bn_inception_case}[a.arch](a)


if __name__ == "__main__":
    main()

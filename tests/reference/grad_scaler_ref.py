"""Drives torch.amp.GradScaler itself through a sequence of steps, as the reference for
hist's loss scaler (src/train/grad_scaler.rs). Used by tests/model_precision.rs.

Usage: grad_scaler_ref.py <scenario.json>
scenario.json: {"init_scale": f, "growth_factor": f, "backoff_factor": f,
                "growth_interval": n, "grad_bits": [[b, ...] for each step]}
    each step's gradient values as float32 bit patterns (exact, and able to carry inf/NaN).
Prints JSON: {"scale_bits": [...], "growth_tracker": [...], "stepped": [...],
              "unscaled_bits": [[...] for each step]}
    after each step's scaler.step + scaler.update: the scale as float32 bit patterns (exact),
    the growth tracker, whether the optimiser stepped, and the unscaled gradient's bits.
"""
import json
import struct
import sys

import torch


class CountingSGD(torch.optim.SGD):
    """SGD with lr 0 that records whether GradScaler let it step."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.stepped = False

    def step(self, closure=None):
        self.stepped = True
        return super().step(closure)


def f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def f32_from_bits(b: int) -> float:
    return struct.unpack("<f", struct.pack("<I", b))[0]


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: grad_scaler_ref.py <scenario.json>")
    with open(sys.argv[1]) as f:
        sc = json.load(f)
    scaler = torch.amp.GradScaler(
        "cpu",
        init_scale=sc["init_scale"],
        growth_factor=sc["growth_factor"],
        backoff_factor=sc["backoff_factor"],
        growth_interval=sc["growth_interval"],
    )
    width = len(sc["grad_bits"][0])
    param = torch.nn.Parameter(torch.zeros(width))
    opt = CountingSGD([param])
    out = {"scale_bits": [], "growth_tracker": [], "stepped": [], "unscaled_bits": []}
    for bits in sc["grad_bits"]:
        # scale() initialises the scaler lazily; its product is not needed here.
        scaler.scale(torch.zeros((), requires_grad=True))
        param.grad = torch.tensor([f32_from_bits(b) for b in bits], dtype=torch.float32)
        opt.stepped = False
        scaler.step(opt)
        scaler.update()
        out["scale_bits"].append(f32_bits(scaler.get_scale()))
        out["growth_tracker"].append(int(scaler._growth_tracker.item()))
        out["stepped"].append(opt.stepped)
        out["unscaled_bits"].append([f32_bits(v) for v in param.grad.tolist()])
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()

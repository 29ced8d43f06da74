"""Runs a training schedule with torch.optim itself, as the reference for hist's optimisers.

Used by tests/optim_reference.rs. Usage: optim_ref.py <scenario.json> <data.safetensors> <out.safetensors>

scenario.json:
    {"optimizer": "adam" | "adamw" | "sgd",
     "betas": [b1, b2], "eps": e,          # adam, adamw
     "momentum": m,                         # sgd
     "groups": [{"name": str, "lr": f, "weight_decay": f, "params": [param name, ...]}, ...],
     "lrs": [[lr of group 0, lr of group 1, ...] for each step]}
data.safetensors: "init/<param>" initial values; "grad/<step>/<param>" the gradient of
    <param> at step <step> (0-based); a missing gradient means the parameter has none (None)
    at that step, as a frozen parameter does.
out.safetensors: "param/<step>/<param>" every parameter after each step, and
    "state/<param>.<key>" the optimiser's final state (step counts as float64).
"""
import json
import sys

import torch
from safetensors.torch import load_file, save_file


def build(scenario, params):
    groups = [
        {
            "params": [params[name] for name in g["params"]],
            "lr": g["lr"],
            "weight_decay": g["weight_decay"],
        }
        for g in scenario["groups"]
    ]
    kind = scenario["optimizer"]
    # foreach=False is what torch picks for CPU tensors anyway; fixed so the reference
    # cannot drift to the multi-tensor kernels.
    if kind == "adam":
        return torch.optim.Adam(
            groups, betas=tuple(scenario["betas"]), eps=scenario["eps"], foreach=False
        )
    if kind == "adamw":
        return torch.optim.AdamW(
            groups, betas=tuple(scenario["betas"]), eps=scenario["eps"], foreach=False
        )
    if kind == "sgd":
        return torch.optim.SGD(groups, momentum=scenario["momentum"], foreach=False)
    sys.exit(f"unknown optimizer {kind!r}")


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit("usage: optim_ref.py <scenario.json> <data.safetensors> <out.safetensors>")
    with open(sys.argv[1]) as f:
        scenario = json.load(f)
    data = load_file(sys.argv[2])

    names = [name for g in scenario["groups"] for name in g["params"]]
    params = {
        name: data[f"init/{name}"].clone().requires_grad_(True) for name in names
    }
    opt = build(scenario, params)

    out = {}
    for step, lrs in enumerate(scenario["lrs"]):
        # What a scheduler (e.g. StepLR) does between steps.
        for group, lr in zip(opt.param_groups, lrs):
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        for name, p in params.items():
            grad = data.get(f"grad/{step}/{name}")
            p.grad = None if grad is None else grad.clone()
        opt.step()
        for name, p in params.items():
            out[f"param/{step}/{name}"] = p.detach().clone()

    for name, p in params.items():
        for key, value in opt.state.get(p, {}).items():
            value = value.detach().clone()
            if key == "step":
                value = value.to(torch.float64)
            out[f"state/{name}.{key}"] = value
    save_file(out, sys.argv[3])


if __name__ == "__main__":
    main()

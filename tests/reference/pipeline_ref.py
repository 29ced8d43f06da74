#!/usr/bin/env python3
"""Independent reference of the image pipeline (src/data/pipeline/), used by
tests/data_pipeline.rs: PIL decoding and torchvision's transforms, as a PyTorch training
script would apply them.

  images DIR                  write test images made from scikit-learn's two sample photos
                              (china.jpg, flower.jpg): JPEGs of several sizes, qualities,
                              chroma subsamplings, a progressive and a greyscale one, and
                              PNGs (RGB, RGBA, palette); DIR/manifest.json lists them
  test DIR OUT CONVENTION RESIZE CROP
                              the test transform of every listed image -> OUT (safetensors,
                              one [3, CROP, CROP] float32 tensor per file name):
                              PIL open + convert("RGB"), Resize(RESIZE), CenterCrop(CROP),
                              ToTensor, then the convention's normalisation
  crops DIR CASES OUT         F.resized_crop(img, top, left, h, w, [size, size], BILINEAR,
                              antialias=True), optional F.hflip, ToTensor, Normalize, for
                              each case of the JSON file CASES -> OUT (tensor "case<i>")
  params CASES OUT            RandomResizedCrop.get_params draws -> JSON: for each case
                              {"width", "height", "n", "seed", "scale", "ratio"} the list
                              of [top, left, height, width]
  decode DIR OUT              PIL's RGB decode (uint8 [H, W, 3]) of every listed image

Conventions: "imagenet" = Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]);
"bn_inception" = pretrained-models' TransformImage for `bninception` (input_space BGR,
input_range [0, 255], mean [104, 117, 128], std [1, 1, 1]): ToTensor, ToSpaceBGR,
ToRange255, Normalize — written out here, since that package is not installed.
"""
import json
import os
import sys

import numpy as np
import sklearn
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image
from safetensors.torch import save_file

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
BN_MEAN = [104.0, 117.0, 128.0]
BN_STD = [1.0, 1.0, 1.0]


def photos():
    base = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images")
    return [Image.open(os.path.join(base, n)).convert("RGB") for n in ("china.jpg", "flower.jpg")]


def view(photo, box, size):
    """A crop of a photo rescaled to `size`: natural content, a given shape."""
    return photo.crop(box).resize(size, Image.BICUBIC)


def cmd_images(directory):
    os.makedirs(directory, exist_ok=True)
    china, flower = photos()
    made = []

    def save(name, img, **kw):
        img.save(os.path.join(directory, name), **kw)
        made.append(name)

    save("china_500x375_q90.jpg", view(china, (40, 20, 600, 420), (500, 375)), quality=90)
    save("flower_375x500_q95_444.jpg", view(flower, (150, 0, 470, 427), (375, 500)), quality=95, subsampling=0)
    save("china_333x251_q75.jpg", view(china, (0, 0, 640, 427), (333, 251)), quality=75)
    save("flower_640x427_progressive.jpg", flower, quality=90, progressive=True)
    save("china_300x200_grey.jpg", view(china, (100, 50, 550, 350), (300, 200)).convert("L"), quality=90)
    save("flower_500x375.png", view(flower, (20, 20, 620, 420), (500, 375)))
    rgba = view(china, (200, 100, 440, 280), (241, 180)).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((241, 180)))
    save("china_241x180_rgba.png", rgba)
    save("flower_260x300_palette.png", view(flower, (0, 0, 400, 427), (260, 300)).convert("P", palette=Image.ADAPTIVE))
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump(made, f)


def load(directory, name):
    # torchvision's ImageFolder loader.
    with open(os.path.join(directory, name), "rb") as f:
        return Image.open(f).convert("RGB")


def normalise(img, convention):
    x = F.to_tensor(img)
    if convention == "imagenet":
        return F.normalize(x, IMAGENET_MEAN, IMAGENET_STD)
    if convention == "bn_inception":
        x = x[[2, 1, 0]]  # ToSpaceBGR
        x = x * 255  # ToRange255
        return F.normalize(x, BN_MEAN, BN_STD)
    raise SystemExit(f"unknown convention {convention}")


def manifest(directory):
    with open(os.path.join(directory, "manifest.json")) as f:
        return json.load(f)


def cmd_test(directory, out, convention, resize, crop):
    t = T.Compose([T.Resize(int(resize)), T.CenterCrop(int(crop))])
    tensors = {n: normalise(t(load(directory, n)), convention).contiguous() for n in manifest(directory)}
    save_file(tensors, out)


def cmd_crops(directory, cases_path, out):
    with open(cases_path) as f:
        cases = json.load(f)
    tensors = {}
    for i, c in enumerate(cases):
        img = load(directory, c["file"])
        img = F.resized_crop(img, c["top"], c["left"], c["height"], c["width"], [c["size"], c["size"]],
                             interpolation=T.InterpolationMode.BILINEAR, antialias=True)
        if c["flip"]:
            img = F.hflip(img)
        tensors[f"case{i}"] = normalise(img, c.get("convention", "imagenet")).contiguous()
    save_file(tensors, out)


def cmd_params(cases_path, out):
    with open(cases_path) as f:
        cases = json.load(f)
    result = []
    for c in cases:
        torch.manual_seed(c["seed"])
        img = Image.new("RGB", (c["width"], c["height"]))
        draws = [list(T.RandomResizedCrop.get_params(img, c["scale"], c["ratio"])) for _ in range(c["n"])]
        result.append(draws)
    with open(out, "w") as f:
        json.dump(result, f)


def cmd_decode(directory, out):
    save_file({n: torch.from_numpy(np.asarray(load(directory, n)).copy()) for n in manifest(directory)}, out)


def main(argv):
    commands = {"images": cmd_images, "test": cmd_test, "crops": cmd_crops, "params": cmd_params, "decode": cmd_decode}
    if len(argv) < 2 or argv[1] not in commands:
        raise SystemExit(__doc__)
    commands[argv[1]](*argv[2:])


if __name__ == "__main__":
    main(sys.argv)

#!/usr/bin/env python3
"""Write scikit-learn's bundled handwritten digits as an ImageFolder dataset for robustloop.

The 1,797 real 8x8 grayscale images (UCI "Optical Recognition of Handwritten Digits", shipped
inside scikit-learn, no download) are split by a seeded, class-stratified shuffle into
``OUT/train/<digit>/*.png`` and ``OUT/test/<digit>/*.png``, and a config for them is written to
``OUT/robustloop.yaml``:

    python scripts/digits-imagefolder.py .robustloop/digits
    robustloop --config .robustloop/digits/robustloop.yaml demo

Needs scikit-learn (``pip install scikit-learn``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

TEST_PER_CLASS = 50
"""Test images per class: 500 in all, split by the config into 250 eval and 250 traffic."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to create (must not exist)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    args = parser.parse_args(argv)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("digits-imagefolder: needs scikit-learn: pip install scikit-learn", file=sys.stderr)
        return 2
    from PIL import Image

    if args.out.exists():
        print(f"digits-imagefolder: {args.out} exists; pick a new folder", file=sys.stderr)
        return 2
    digits = load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # values 0..16 -> 0..255
    rng = np.random.default_rng(args.seed)
    counts = {"train": 0, "test": 0}
    for label in range(10):
        indices = rng.permutation(np.flatnonzero(digits.target == label))
        for part, chosen in (
            ("test", indices[:TEST_PER_CLASS]),
            ("train", indices[TEST_PER_CLASS:]),
        ):
            folder = args.out / part / str(label)
            folder.mkdir(parents=True)
            for index in chosen:
                Image.fromarray(pixels[index], mode="L").save(folder / f"{index:04d}.png")
            counts[part] += len(chosen)
    (args.out / "robustloop.yaml").write_text(
        "# scikit-learn's handwritten digits (8x8 grayscale), written by "
        "scripts/digits-imagefolder.py\n"
        "data:\n"
        "  format: imagefolder\n"
        f"  root: {args.out.resolve()}\n"
        "  eval_size: 250\n"
        "  traffic_size: 250\n"
        "model:\n"
        "  name: digits-cnn\n"
        f"store:\n  path: {(args.out / 'store').resolve()}\n"
        f"stack:\n  run_dir: {(args.out / 'run').resolve()}\n"
        "gate:\n  n: 250\n"
        "# 1,297 images: the default 3 epochs of 128 would be 30 optimizer steps\n"
        "training:\n  epochs: 20\n  batch_size: 32\n",
        encoding="utf-8",
    )
    print(
        f"wrote {counts['train']} training and {counts['test']} test images of 10 digits to "
        f"{args.out}, and {args.out / 'robustloop.yaml'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

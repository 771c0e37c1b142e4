"""A small dataset of real images for measuring training recipes: scikit-learn's handwritten digits.

    pip install scikit-learn && python bench/digits_dataset.py OUT_DIR [--size 64]

The 1,797 8x8 scans of handwritten digits (UCI; 10 classes, about 180 each, bundled inside the
scikit-learn wheel, so no download) are written as an ImageNet-style folder, OUT_DIR/train/<digit>/
*.png and OUT_DIR/val/<digit>/*.png, 80/20 per class (seeded), each image scaled up to SIZE x SIZE
(bicubic) with its 0..16 ink values stretched to 0..255 and inverted to dark ink on white. It is
the kind of folder a user brings: small, few classes, nothing like ImageNet. docs/training.md
measures the default recipe on it (and on the demo data).
"""
import argparse
import os

import numpy as np


def write_digits(out, size=64, val_fraction=0.2, seed=0):
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "val": 0}
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == label))
        n_val = int(round(val_fraction * len(idx)))
        for split, chosen in (("val", idx[:n_val]), ("train", idx[n_val:])):
            folder = os.path.join(out, split, str(label))
            os.makedirs(folder, exist_ok=True)
            for i in chosen:
                pixels = (255 - digits.images[i] * (255 / 16)).astype(np.uint8)      # dark ink on white
                Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC).save(
                    os.path.join(folder, f"{i:04d}.png"))
                counts[split] += 1
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", metavar="OUT_DIR")
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    counts = write_digits(args.out, args.size)
    print(f"wrote {args.out}: {counts['train']} train / {counts['val']} val images, 10 classes, "
          f"{args.size}x{args.size}")


if __name__ == "__main__":
    main()

"""Images/s of fundus preprocessing on one core (skimage's 1411x1411 retina photograph).

Run: ``python benchmarks/preprocess.py [--size 224] [--repeats 20]``.
"""

from __future__ import annotations

import argparse
import time

import torch
from skimage import data

from fedeye.sites.preprocess import preprocess_fundus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    image = data.retina()
    for mode in ("none", "fov-crop", "fov-crop+clahe"):
        start = time.perf_counter()
        for _ in range(args.repeats):
            preprocess_fundus(image, mode=mode, size=args.size)  # type: ignore[arg-type]
        rate = args.repeats / (time.perf_counter() - start)
        print(f"{mode:>15}: {rate:6.1f} images/s per core ({image.shape[1]}x{image.shape[0]} -> {args.size})")


if __name__ == "__main__":
    main()

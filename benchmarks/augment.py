"""Augmentation throughput: our batched per-sample augmentation vs torchvision v2 per image.

    .venv/bin/python benchmarks/augment.py            # prints a markdown table

Policy: rotation 20 degrees + shift 0.1 + zoom 0.1 + horizontal flip, zero fill, bilinear or
nearest (the same on both sides of a row), on random uint8 images of real shapes (speed does not
depend on content). Every row ends with a float [0, 1] batch ready for a model, so the
uint8 -> float step is counted for all.

- ours: ``build_augment`` on whole batches, torch threads = 2 (one warp per batch);
- v2 DataLoader: ``RandomAffine`` + ``RandomHorizontalFlip`` per image (uint8 tensors) in a
  map-style dataset, ``DataLoader(num_workers=2, persistent_workers=True)``, the idiomatic way;
- v2 in process: the same dataset with ``num_workers=0``;
- kernel alone: the same batches through ``to_float`` and one ``grid_sample`` on an identity
  grid (built once), no augmentation: the most any warp built on that kernel can reach here
  (a rotated grid only makes the kernel slower), so its ratio bounds ours.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from pipeline import runtime
from pipeline.data.augment import build_augment, to_float
from pipeline.spec.data import AugmentSection

DEGREES, SHIFT, ZOOM = 20.0, 0.1, 0.1
SHAPES = [((1, 28, 28), 128), ((3, 150, 150), 32)]  # (C, H, W), batch size


class PerImage(Dataset):
    """A TensorDataset that transforms each image as it is fetched (the torchvision idiom)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.x[i]), self.y[i]


def v2_transform(interpolation: str) -> v2.Compose:
    return v2.Compose(
        [
            v2.RandomAffine(
                degrees=DEGREES,
                translate=(SHIFT, SHIFT),
                scale=(1 - ZOOM, 1 + ZOOM),
                interpolation=v2.InterpolationMode(interpolation),
                fill=0,
            ),
            v2.RandomHorizontalFlip(),
        ]
    )


def ours(x: torch.Tensor, batch: int, interpolation: str) -> Callable[[], int]:
    warp = {"fill": "constant", "interpolation": interpolation}
    section = AugmentSection.model_validate(
        {
            "transforms": [
                {"type": "rotation", "degrees": DEGREES, **warp},
                {"type": "shift", "width": SHIFT, "height": SHIFT, **warp},
                {"type": "zoom", "range": ZOOM, **warp},
                {"type": "horizontal_flip"},
            ]
        }
    )
    augment = build_augment(section)
    assert augment is not None
    g = torch.Generator().manual_seed(0)  # the epoch order
    draws = torch.Generator(x.device).manual_seed(0)  # the augmentation, where x lives

    def epoch() -> int:
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch):
            out = augment(to_float(x[order[start : start + batch]]), draws)
        assert out.dtype == torch.float32
        return len(x)

    return epoch


def kernel_alone(x: torch.Tensor, batch: int, interpolation: str) -> Callable[[], int]:
    import torch.nn.functional as F

    theta = torch.eye(2, 3).expand(batch, 2, 3)
    grid = F.affine_grid(theta, [batch, *x.shape[1:]], align_corners=False)
    g = torch.Generator().manual_seed(0)

    def epoch() -> int:
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch):
            xb = to_float(x[order[start : start + batch]])
            out = F.grid_sample(xb, grid[: len(xb)], mode=interpolation, align_corners=False)
        assert out.dtype == torch.float32
        return len(x)

    return epoch


def loader(x: torch.Tensor, batch: int, workers: int, interpolation: str) -> Callable[[], int]:
    data = PerImage(x, torch.zeros(len(x), dtype=torch.long), v2_transform(interpolation))
    dl = DataLoader(
        data, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )

    def epoch() -> int:
        n = 0
        for xb, _ in dl:
            out = to_float(xb)
            n += len(out)
        return n

    return epoch


def images_per_second(epoch: Callable[[], int], repeats: int) -> float:
    epoch()  # warm-up: starts the workers, allocates, fills caches
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = epoch()
        rates.append(n / (time.perf_counter() - t0))
    # Best of N: on a shared machine noise only ever slows a run down, for every row alike.
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40, help="batches per timed epoch")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs (best reported)")
    parser.add_argument(
        "--interpolation",
        nargs="+",
        default=["bilinear", "nearest"],
        choices=["bilinear", "nearest"],
        help="the same for ours and v2",
    )
    parser.add_argument(
        "--allocator",
        choices=["tuned", "default"],
        default="tuned",
        help="tuned: runtime.tune_allocator(), as pipeline train runs; for the "
        "whole process, so the DataLoader's forked workers have it too",
    )
    args = parser.parse_args()
    if args.allocator == "tuned":
        runtime.tune_allocator()
    torch.set_num_threads(2)
    cpu = platform.processor() or platform.machine()
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    # Other processes on a 2-core machine skew every row; the load average says how much.
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs ({cpu}), threads = 2, "
        f"allocator {args.allocator}, load {load}\n"
    )
    print(
        "| images | batch | interpolation | ours (batched) img/s | v2 DataLoader 2 workers "
        "img/s | ratio | v2 0 workers img/s | ratio | kernel alone img/s | its ratio |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (c, h, w), batch in SHAPES:
        x = torch.randint(0, 256, (batch * args.batches, c, h, w), dtype=torch.uint8)
        for mode in args.interpolation:
            fast = images_per_second(ours(x, batch, mode), args.repeats)
            two = images_per_second(loader(x, batch, 2, mode), args.repeats)
            zero = images_per_second(loader(x, batch, 0, mode), args.repeats)
            kernel = images_per_second(kernel_alone(x, batch, mode), args.repeats)
            print(
                f"| {h}x{w}x{c} | {batch} | {mode} | {fast:,.0f} | {two:,.0f} | {fast / two:.1f}x "
                f"| {zero:,.0f} | {fast / zero:.1f}x | {kernel:,.0f} | {kernel / two:.1f}x |"
            )
    print(f"\nload average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()

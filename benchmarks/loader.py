"""Loader overhead: one epoch of MNIST batches from ``BatchLoader`` (no model) against one
training epoch of the seeds' MNIST convnet, and against ``DataLoader(TensorDataset)``.

    PIPELINE_DATA_MIRROR=../shared/datasets .venv/bin/python benchmarks/loader.py \\
        --readme benchmarks/README.md

Data: ``specs/mnist_convnet.yaml`` prepared (train split: 54,001 images after its 10% validation
split). Every loader row ends with float32 batches normalized with the dataset's mean/std, in
channels_last, ready for the model. Train: the seeds' convnet (conv32-pool-conv64-pool-conv64-
flatten-dense64-dense10, 93,322 params) in plain PyTorch, RMSprop (Keras defaults), channels_last,
glibc's allocator kept from mmap-ing each step's activations (benchmarks/README.md).
Each time is the fastest of ``--repeats`` loader epochs or ``--train-epochs`` training epochs (a
fresh model each): other work on a shared machine only ever slows a run down.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pipeline.data import BatchLoader, prepare
from pipeline.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Loader overhead"


def tune_malloc() -> None:
    """mmap threshold at glibc's maximum (32 MiB) and no trimming: ~11 MB of activations per
    step are otherwise mapped and unmapped every step."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 1 << 30)


def convnet() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(576, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip


def drain(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Seconds to take every batch (the batches are made; nothing else is done with them)."""
    start = time.perf_counter()
    for _ in batches:
        pass
    return time.perf_counter() - start


def torch_batches(loader: DataLoader, mean: torch.Tensor, std: torch.Tensor) -> Iterable:
    """DataLoader batches finished the same way BatchLoader finishes its own."""
    for xb, yb in loader:
        xb = xb.contiguous(memory_format=torch.channels_last).float().div_(255)
        yield (xb - mean) / std, yb


def train_epoch(loader: BatchLoader, seed: int) -> float:
    torch.manual_seed(seed)
    model = convnet().to(memory_format=torch.channels_last)
    # Keras's RMSprop defaults: rho 0.9, epsilon 1e-7.
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for xb, yb in loader:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xb), yb).backward()
        opt.step()
    return time.perf_counter() - start


def measure(
    batch_sizes: list[int], repeats: int, train_epochs: int, out_root: Path
) -> tuple[list[dict], int]:
    spec = load_spec(REPO / "specs/mnist_convnet.yaml")
    prepared = prepare(spec, out_root)
    x, y = prepared.split("train")
    mean = torch.tensor(prepared.mean).view(1, -1, 1, 1)
    std = torch.tensor(prepared.std).view(1, -1, 1, 1)
    rows = []
    for bs in batch_sizes:
        ours = BatchLoader.from_prepared(
            prepared, "train", bs, shuffle=True, seed=spec.seed, memory_format=torch.channels_last
        )
        # Training first, in a process no DataLoader worker has touched yet.
        train = min(train_epoch(ours, spec.seed) for _ in range(train_epochs))
        print(f"batch {bs}: train epoch {train:.2f} s ({len(y) / train:,.0f} img/s)", flush=True)
        ds = TensorDataset(x, y)
        times = {"BatchLoader": [drain(ours) for _ in range(repeats)]}
        dl0 = DataLoader(ds, bs, shuffle=True)
        times["DataLoader, 0 workers"] = [
            drain(torch_batches(dl0, mean, std)) for _ in range(repeats)
        ]
        dl2 = DataLoader(ds, bs, shuffle=True, num_workers=2, persistent_workers=True)
        drain(torch_batches(dl2, mean, std))  # start the workers outside the timing
        times["DataLoader, 2 workers"] = [
            drain(torch_batches(dl2, mean, std)) for _ in range(repeats)
        ]
        del dl2
        gc.collect()  # stops the persistent workers before the next batch size trains
        for name, ts in times.items():
            rows.append({"loader": name, "batch": bs, "epoch_s": min(ts), "train_s": train})
    return rows, len(y)


def table(rows: list[dict]) -> str:
    base = {r["batch"]: r["epoch_s"] for r in rows if r["loader"] == "BatchLoader"}
    lines = [
        "| loader | batch | one epoch (s) | / BatchLoader | train epoch (s) | share of training |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['loader']} | {r['batch']} | {r['epoch_s']:.3f} | "
            f"{r['epoch_s'] / base[r['batch']]:.1f}x | {r['train_s']:.2f} | "
            f"{100 * r['epoch_s'] / r['train_s']:.2f}% |"
        )
    return "\n".join(lines)


def write_section(readme: Path, body: str) -> None:
    """Replace (or append) this benchmark's section; other sections are left as they are."""
    text = readme.read_text() if readme.exists() else "# Benchmarks\n"
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + body
    else:
        end = text.find("\n## ", start + len(SECTION))
        rest = "\n" + text[end + 1 :] if end >= 0 else ""
        text = text[:start] + body.rstrip("\n") + "\n" + rest
    readme.write_text(text.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=3, help="loader epochs (fastest)")
    parser.add_argument("--train-epochs", type=int, default=2, help="training epochs (fastest)")
    parser.add_argument("--out-root", type=Path, default=REPO / "data" / "prepared")
    parser.add_argument("--readme", type=Path, help="write the results into this markdown file")
    args = parser.parse_args()
    tune_malloc()
    load_before = os.getloadavg()[0]
    rows, n = measure(args.batch, args.repeats, args.train_epochs, args.out_root)
    load = f"1-minute load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    print(load)
    result = table(rows)
    print(result)
    if args.readme:
        cpu = platform.processor() or platform.machine()
        body = (
            f"{SECTION}\n\n"
            f"One epoch of MNIST training batches ({n:,} images, uint8 -> normalized float32, "
            "channels_last) against one training epoch of the seeds' MNIST convnet (RMSprop, "
            "channels_last, glibc mmap threshold 32 MiB). Goal: the loader under 2% of training.\n"
            f"Machine: {os.cpu_count()}-core AMD EPYC, CPU only, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {cpu}; {load} (other work on the machine "
            "slows the training epoch several-fold: compare runs on a quiet machine).\n"
            "Command: `PIPELINE_DATA_MIRROR=../shared/datasets .venv/bin/python "
            "benchmarks/loader.py --readme benchmarks/README.md`\n\n"
            f"{result}\n"
        )
        write_section(args.readme, body)


if __name__ == "__main__":
    main()

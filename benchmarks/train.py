"""Training throughput: `pipeline train` vs plain PyTorch loops vs Lightning, side by side.

The seeds' MNIST convnet (93,322 params) on real MNIST, batch 64, RMSprop, one epoch of 60,000
images, torch threads = all cores. Each variant runs in its own process (the allocator setting
is process-wide), the variants alternate, and the median of the rounds is reported.

    PIPELINE_DATA_MIRROR=../shared/datasets .venv/bin/python benchmarks/train.py --rounds 3
    ... benchmarks/train.py --accuracy bf16     # the default spec's test accuracy, seeds 0-2

Variants:
  naive        plain loop: NCHW, default allocator, DataLoader-free tensor slicing
  tuned        plain loop: channels_last + glibc mallopt (the best hand-tuned loop here)
  pipeline     pipeline.train.loop.Trainer on specs/mnist_convnet.yaml (validation off)
  pipeline-bf16  the same with train.precision: bf16 (autocast; fp32 where the CPU lacks bf16)
  lightning    the naive model/loop under lightning.Trainer (if lightning is installed)
  eval         pipeline evaluation throughput (images/s, batch 512) with the trained model
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "mnist_convnet.yaml"
BATCH = 64


def _data():
    from pipeline.data.prepare import prepare
    from pipeline.spec import load_spec

    spec = load_spec(SPEC, ["data.validation=null"])
    prepared = prepare(spec, out_root="/tmp/pipeline-bench-prepared")
    return spec, prepared


def _plain_model():
    import torch
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(576, 64), nn.ReLU(), nn.Linear(64, 10),
    ), torch  # fmt: skip


def _plain(channels_last: bool, tuned_alloc: bool) -> float:
    if tuned_alloc:
        from pipeline.runtime import tune_allocator

        tune_allocator()
    _spec, prepared = _data()
    model, torch = _plain_model()
    x, y = prepared.split("train")
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
    loss_fn = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)

    def epoch() -> float:
        perm = torch.randperm(len(y), generator=g)
        began = time.perf_counter()
        for i in range(0, len(y), BATCH):
            idx = perm[i : i + BATCH]
            xb = (x[idx].float() / 255).contiguous(memory_format=fmt)
            loss = loss_fn(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - began

    epoch()  # warm-up epoch (allocator, kernels)
    return len(y) / epoch()


def _pipeline(precision: str = "fp32") -> float:
    from pipeline.run import Run
    from pipeline.spec.train import Phase
    from pipeline.train.epoch import train_epoch
    from pipeline.train.loop import Trainer

    spec, prepared = _data()
    spec.train.precision = precision
    run = Run(Path("/tmp/pipeline-bench-run"))
    trainer = Trainer(spec, prepared, run=run, log=lambda _m: None)
    optimizer, schedule = trainer._enter(Phase(epochs=2))
    train_epoch(trainer, 0, optimizer, schedule, swa=False)  # warm-up epoch
    began = time.perf_counter()
    train_epoch(trainer, 1, optimizer, schedule, swa=False)
    return trainer.train_loader.n / (time.perf_counter() - began)


def _lightning() -> float:
    import lightning as pl
    import torch

    _spec, prepared = _data()
    model, _ = _plain_model()
    x, y = prepared.split("train")
    ds = torch.utils.data.TensorDataset(torch.as_tensor(x).float() / 255, torch.as_tensor(y))
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def training_step(self, batch, _i):
            xb, yb = batch
            return torch.nn.functional.cross_entropy(self.net(xb), yb)

        def configure_optimizers(self):
            return torch.optim.RMSprop(self.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)

    times: list[float] = []

    class Timer(pl.Callback):
        def on_train_epoch_start(self, *_a) -> None:
            self.t = time.perf_counter()

        def on_train_epoch_end(self, *_a) -> None:
            times.append(time.perf_counter() - self.t)

    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Timer()],
    )
    trainer.fit(Module(), loader)
    return len(y) / times[-1]


def _eval() -> float:
    import torch

    from pipeline.model.build import build_model
    from pipeline.runtime import tune_allocator

    tune_allocator()
    spec, prepared = _data()
    from pipeline.data.loader import BatchLoader

    model = build_model(spec).to(memory_format=torch.channels_last).eval()
    loader = BatchLoader.from_prepared(prepared, "test", 512, memory_format=torch.channels_last)
    with torch.no_grad():
        for xb, _ in loader:
            model(xb)
        began = time.perf_counter()
        for xb, _ in loader:
            model(xb)
    return loader.n / (time.perf_counter() - began)


VARIANTS = {
    "naive": lambda: _plain(channels_last=False, tuned_alloc=False),
    "tuned": lambda: _plain(channels_last=True, tuned_alloc=True),
    "pipeline": _pipeline,
    "pipeline-bf16": lambda: _pipeline("bf16"),
    "lightning": _lightning,
    "eval": _eval,
}


def accuracy(precision: str, seeds: list[int]) -> None:
    """The default spec end to end (5 epochs, then the test split) in ``precision``, per seed:
    does it still reach 99.0%?"""
    import os
    import shutil

    env = {**os.environ, "PIPELINE_ORCHESTRATION": "off"}
    for seed in seeds:
        name = f"bench-{precision}-seed{seed}"
        sets = [f"name={name}", f"seed={seed}", f"train.precision={precision}"]
        args = [a for x in sets for a in ("-S", x)]
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline", "run", str(SPEC), *args], cwd=ROOT,
                       env=env, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        folder = ROOT / "runs" / name
        metrics = json.loads((folder / "metrics.json").read_text())
        shutil.rmtree(folder)
        print(
            f"{precision} seed {seed}: test accuracy {metrics['test_accuracy']:.4f} (trained "
            f"in {metrics.get('train_precision')}; {time.perf_counter() - began:.0f} s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accuracy", metavar="PRECISION", help="test accuracy per seed instead")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", choices=list(VARIANTS))
    parser.add_argument("--only", nargs="*", default=list(VARIANTS))
    args = parser.parse_args()
    if args.accuracy:
        accuracy(args.accuracy, args.seeds)
        return
    if args.variant:
        print(json.dumps({"images_per_s": VARIANTS[args.variant]()}))
        return
    results: dict[str, list[float]] = {v: [] for v in args.only}
    for r in range(args.rounds):
        for v in args.only:
            out = subprocess.run(
                [sys.executable, __file__, "--variant", v], capture_output=True, text=True, cwd=ROOT
            )
            if out.returncode:
                print(f"{v}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                results.pop(v)
                continue
            results[v].append(json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"])
            print(f"round {r + 1} {v}: {results[v][-1]:,.0f} img/s", file=sys.stderr)
        args.only = [v for v in args.only if v in results]
    med = {v: statistics.median(x) for v, x in results.items() if x}
    base = med.get("naive")
    print(f"| variant | images/s (median of {args.rounds}) | vs naive | vs tuned |")
    print("| --- | --- | --- | --- |")
    for v, m in med.items():
        vs_naive = f"{m / base:.2f}x" if base and v != "eval" else ""
        vs_tuned = f"{m / med['tuned']:.2f}x" if "tuned" in med and v != "eval" else ""
        print(f"| {v} | {m:,.0f} | {vs_naive} | {vs_tuned} |")


if __name__ == "__main__":
    main()

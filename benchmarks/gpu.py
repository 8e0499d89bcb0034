"""The GPU figures issues #3 and #4 ask for, in one short run for a lent GPU machine.

    PIPELINE_DATA_MIRROR=../shared/datasets .venv/bin/python benchmarks/gpu.py
    .venv/bin/python -m pytest -q -k cuda tests/data tests/model/test_model_build.py

1. Training: ``specs/mnist_convnet.yaml`` on the device as ``pipeline train`` runs it there
   (``train.precision: auto`` = bf16 autocast on CUDA, channels_last, the prepared uint8 data
   resident on the GPU): images/s per epoch, the time to 99% validation accuracy, then the
   test accuracy and images/s of ``evaluate``.
2. Loader: one epoch of MNIST training batches on the device, resident vs pinned copies.
3. Augmentation: the policy of ``benchmarks/augment.py`` (rotation, shift, zoom, flip), ours,
   on the device, for 28x28 and 150x150x3 batches.
4. DDP: the same spec in one process against one process per GPU (``train.nproc``, NCCL),
   by ``benchmarks/ddp.py``; with one GPU it says there is nothing to compare.

``--device cpu --epochs 1`` runs the same on the CPU (a check of the script itself). With
``$OUT`` set (the device machine's output folder) the figures are also written to
``$OUT/gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from pipeline import runtime
from pipeline.data.loader import BatchLoader
from pipeline.data.prepare import prepare
from pipeline.evaluate import evaluate
from pipeline.spec import load_spec
from pipeline.train.loop import train

ROOT = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training(device: str, epochs: int) -> dict:
    spec = load_spec(
        ROOT / "specs" / "mnist_convnet.yaml", [f"train.device={device}", f"train.epochs={epochs}"]
    )
    prepared = prepare(spec)
    with tempfile.TemporaryDirectory() as out:
        began = time.perf_counter()
        result = train(spec, prepared=prepared, out=Path(out), log=print)
        wall = time.perf_counter() - began
        metrics = evaluate(spec, out=Path(out), prepared=prepared, log=print)
    elapsed, to_99 = 0.0, None
    for row in result.history:
        elapsed += row["time_s"]
        if to_99 is None and row.get("val_accuracy", 0) >= 0.99:
            to_99 = elapsed
    return {
        "epochs": len(result.history),
        "wall_s": round(wall, 1),
        "images_per_s": [round(r["train_images_per_s"]) for r in result.history],
        "seconds_to_99_val": None if to_99 is None else round(to_99, 1),
        "test_accuracy": metrics["test_accuracy"],
        "eval_precision": metrics["precision"],
    }


def loader(device: torch.device) -> dict:
    spec = load_spec(ROOT / "specs" / "mnist_convnet.yaml")
    prepared = prepare(spec)
    rows = {}
    modes = {"resident": True, "pinned copies": False} if device.type == "cuda" else {"cpu": False}
    for name, resident in modes.items():
        batches = BatchLoader.from_prepared(
            prepared, "train", 64, shuffle=True, device=device, resident=resident
        )
        for _ in batches:  # warm-up: the copy to the GPU, pinned buffers
            pass
        _sync(device)
        began = time.perf_counter()
        for _ in batches:
            pass
        _sync(device)
        rows[name] = round(time.perf_counter() - began, 3)
    return {"epoch_s": rows}


def augmentation(device: torch.device, repeats: int = 5) -> dict:
    """benchmarks/augment.py's policy and loop, ours only, on the device (bilinear)."""
    from augment import SHAPES, images_per_second, ours  # benchmarks/ is on sys.path

    rates = {}
    for (c, h, w), batch in SHAPES:
        x = torch.randint(0, 256, (batch * 40, c, h, w), dtype=torch.uint8, device=device)
        epoch = ours(x, batch, "bilinear")

        def synced(epoch=epoch) -> int:
            n = epoch()
            _sync(device)  # count the kernels, not just their launches
            return n

        rates[f"{h}x{w}x{c} batch {batch}"] = round(images_per_second(synced, repeats))
    return {"images_per_s": rates}


def ddp(device: str, epochs: int) -> dict:
    """benchmarks/ddp.py: one process against one per GPU (or 2 CPU processes)."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ddp.json"
        script = str(ROOT / "benchmarks" / "ddp.py")
        kind = device.split(":")[0]
        cmd = [
            sys.executable,
            script,
            "--device",
            kind,
            "--epochs",
            str(epochs),
            "--json",
            str(out),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        print(done.stdout, done.stderr[-2000:], flush=True)
        if out.is_file():
            return json.loads(out.read_text())
        return {"skipped": done.stdout.strip() or done.stderr.strip()[-500:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    runtime.tune_allocator()
    device = torch.device(args.device)
    figures = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    figures["augmentation"] = augmentation(device)
    print(json.dumps(figures["augmentation"]), flush=True)
    figures["loader"] = loader(device)
    print(json.dumps(figures["loader"]), flush=True)
    figures["training"] = training(args.device, args.epochs)
    figures["ddp"] = ddp(args.device, min(args.epochs, 2))
    print(json.dumps(figures, indent=2))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Evaluation throughput of the default model on the real MNIST test split, as `evaluate` runs it.

Each variant is the evaluate stage's own path: the prepared uint8 test split through the
BatchLoader (normalize, channels_last), the model under ``inference_mode`` and the spec's
precision, probabilities collected on the CPU. Reported per variant: the first pass over the
10,000 test images (what one `pipeline evaluate` pays, oneDNN's kernel creation included) and
the best of ``--repeats`` further passes (steady state). Weights are the trained checkpoint
when `runs/mnist_convnet/checkpoints/best.pt` exists, else random (speed does not depend on
them); the accuracy column says which.

    PIPELINE_DATA_MIRROR=../shared/datasets .venv/bin/python benchmarks/evaluate.py
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from pipeline import runtime
from pipeline.data.loader import BatchLoader
from pipeline.data.prepare import prepare
from pipeline.evaluate import collect
from pipeline.model.build import build_model
from pipeline.run import Run
from pipeline.spec import load_spec
from pipeline.train import checkpoint

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 256, 512])
    args = ap.parse_args()
    runtime.tune_allocator()
    spec = load_spec(ROOT / "specs" / "mnist_convnet.yaml")
    prepared = prepare(spec)
    run = Run.of(spec, ROOT / "runs")
    trained = run.checkpoint("best").is_file()
    model = (
        checkpoint.load_trained(spec, "best", run=run)[0]
        if trained
        else build_model(spec, load_weights=False)
    )
    fmt = runtime.memory_format(model, "auto")
    model = model.to(memory_format=fmt).eval()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
        f"bf16 native: {runtime.bf16_supported(torch.device('cpu'))}, "
        f"load {os.getloadavg()[0]:.2f}, weights: {'trained' if trained else 'random'}"
    )
    print(
        "| precision | batch | first pass img/s | steady img/s (best of "
        f"{args.repeats}) | test accuracy |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for batch in args.batches:
        for precision in ("fp32", "bf16"):
            loader = BatchLoader.from_prepared(prepared, "test", batch, memory_format=fmt)
            times = []
            for _ in range(1 + args.repeats):
                autocast, used = runtime.inference_autocast(precision, torch.device("cpu"))
                start = time.perf_counter()
                probs, labels = collect(model, loader, autocast)
                times.append(time.perf_counter() - start)
            n = len(labels)
            accuracy = float((probs.argmax(1) == labels).float().mean())
            print(
                f"| {used} | {batch} | {n / times[0]:,.0f} | {n / min(times[1:]):,.0f} | "
                f"{accuracy:.4f} |"
            )


if __name__ == "__main__":
    main()

"""Gradient accumulation's cost: batch 64 at once against 16 x accumulate 4, side by side.

The default spec (specs/mnist_convnet.yaml, the seeds' convnet on real MNIST, RMSprop) trained
for one timed epoch (after a warm-up epoch) by the pipeline's own Trainer, validation off,
both variants the same optimizer steps on the same effective batch of 64. Each variant runs in
its own process (the allocator setting is process-wide), the variants alternate over the
rounds (the first round in one order, the next in the other), and the median is reported.

    PIPELINE_DATA_MIRROR=../shared/datasets .venv/bin/python benchmarks/accumulate.py --rounds 5
    ... benchmarks/accumulate.py --rounds 1 --images 2000   # a quick smoke check

What to expect: four forward/backward passes of 16 cost more than one of 64 (smaller matrix
products, four times the per-batch overhead), the optimizer steps are the same.
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
VARIANTS = {"64 at once": (64, 1), "16 x accumulate 4": (16, 4)}


def images_per_s(batch: int, accumulate: int, images: int | None, device: str) -> float:
    """One timed epoch of the Trainer, after a warm-up epoch."""
    from pipeline.data.prepare import prepare
    from pipeline.run import Run
    from pipeline.spec import load_spec
    from pipeline.spec.train import Phase
    from pipeline.train.epoch import train_epoch
    from pipeline.train.loop import Trainer

    sets = ["data.validation=null", f"train.batch_size={batch}", f"train.accumulate={accumulate}"]
    sets.append(f"train.device={device}")
    if images:
        sets.append(f"data.subset={{train_per_class: {images // 10}, test_per_class: 1}}")
    spec = load_spec(SPEC, sets)
    prepared = prepare(spec, out_root="/tmp/pipeline-bench-prepared")
    trainer = Trainer(spec, prepared, run=Run(Path("/tmp/pipeline-bench-run")), log=lambda _: None)
    optimizer, schedule = trainer._enter(Phase(epochs=2))
    train_epoch(trainer, 0, optimizer, schedule, swa=False)  # warm-up epoch
    began = time.perf_counter()
    train_epoch(trainer, 1, optimizer, schedule, swa=False)
    return trainer.train_loader.n / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, help="a subset of the training split (smoke)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", choices=list(VARIANTS))
    args = parser.parse_args()
    if args.variant:
        rate = images_per_s(*VARIANTS[args.variant], args.images, args.device)
        print(json.dumps({"images_per_s": rate}))
        return
    results: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
        for v in order:
            cmd = [sys.executable, __file__, "--variant", v, "--device", args.device]
            if args.images:
                cmd += ["--images", str(args.images)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
            results[v].append(json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"])
            print(f"round {r + 1} {v}: {results[v][-1]:,.0f} img/s", file=sys.stderr)
    med = {v: statistics.median(x) for v, x in results.items()}
    base = med["64 at once"]
    print(f"| variant | images/s (median of {args.rounds}) | vs 64 at once |")
    print("| --- | --- | --- |")
    for v, m in med.items():
        print(f"| {v} | {m:,.0f} | {m / base:.2f}x |")


if __name__ == "__main__":
    main()

"""EMA of the weights on against off, and test-time augmentation on against off, on the default
spec (specs/mnist_convnet.yaml: the seeds' convnet, real MNIST, 5 epochs), seeds 0, 1 and 2.

Each seed trains twice with ``pipeline run`` (prepare, train, evaluate), once plain and once
with ``train.ema: {decay: 0.999}`` (the average spans ~1000 of the run's 4,220 steps); each of
those runs is then evaluated twice more from the same checkpoint with test-time augmentation:
``evaluate.tta: {augment: 4}`` through a small shift (8% of the side: translations, as digits
allow) and ``evaluate.tta: {flip: true}`` (a mirror: wrong for digits, shown as the control).
The test accuracies are reported side by side.

    PIPELINE_DATA_MIRROR=../shared/datasets .venv/bin/python benchmarks/averaging.py
    ... benchmarks/averaging.py --seeds 0 --epochs 1     # a quick smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "mnist_convnet.yaml"
TRAINED = {"ema off": [], "ema on": ["train.ema={decay: 0.999}"]}
SHIFT = "augment={transforms: [{type: shift, width: 0.08, height: 0.08}]}"
TTA = {
    "plain": [],
    "tta shift x4": [SHIFT, "evaluate.tta={augment: 4}"],
    "tta flip": ["evaluate.tta={flip: true}"],
}


def pipeline(command: str, sets: list[str]) -> None:
    args = [a for s in sets for a in ("-S", s)]
    env = {**os.environ, "PIPELINE_ORCHESTRATION": "off"}
    subprocess.run(
        [sys.executable, "-m", "pipeline", command, str(SPEC), *args],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs (smoke)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    acc: dict[str, dict[str, list[float]]] = {t: {e: [] for e in TTA} for t in TRAINED}
    for seed in args.seeds:
        for trained, extra in TRAINED.items():
            name = f"bench-avg-{trained.replace(' ', '')}-seed{seed}"
            sets = [f"name={name}", f"seed={seed}", *extra]
            if args.epochs:
                sets.append(f"train.epochs={args.epochs}")
            began = time.perf_counter()
            pipeline("run", sets)
            folder = ROOT / "runs" / name
            for evaluated, more in TTA.items():
                if more:
                    pipeline("evaluate", [*sets, *more])
                metrics = json.loads((folder / "metrics.json").read_text())
                key = "tta_test_accuracy" if more else "test_accuracy"
                acc[trained][evaluated].append(metrics[key])
            shutil.rmtree(folder)
            print(
                f"seed {seed}, {trained}: "
                + ", ".join(f"{e} {acc[trained][e][-1]:.4f}" for e in TTA)
                + f" ({time.perf_counter() - began:.0f} s)",
                flush=True,
            )
    print("\ntest accuracy, seeds " + "/".join(map(str, args.seeds)) + " (mean)")
    for trained in TRAINED:
        for evaluated in TTA:
            runs = acc[trained][evaluated]
            shown = " / ".join(f"{a:.4f}" for a in runs)
            print(f"  {trained:8} {evaluated:13} {shown}  ({statistics.mean(runs):.4f})")
    if args.json:
        args.json.write_text(json.dumps(acc, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""One run in one process against the same run in N processes (DDP), side by side.

The default spec (specs/mnist_convnet.yaml, the seeds' convnet on real MNIST, global batch 64)
trained with ``pipeline train`` for ``--epochs`` epochs, then evaluated on the test split:

- ``1 process``: ``train.nproc=1`` with every core as its threads;
- ``N processes``: ``train.nproc=N`` (gloo on CPU, NCCL on CUDA), the cores split between
  them (each rank ``cores / N`` threads).

Reported: the training images/s of each epoch (global, all ranks together; from history.csv),
the test accuracy, and the ratio. The variants alternate over ``--rounds``. On a CUDA machine
(``--device cuda``) N defaults to the GPUs there (one process per GPU); with one GPU there is
nothing to compare and the script says so.

    PIPELINE_DATA_MIRROR=../shared/datasets .venv/bin/python benchmarks/ddp.py --epochs 2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "mnist_convnet.yaml"


def _run(name: str, nproc: int, epochs: int, device: str) -> dict:
    env = {**os.environ, "PIPELINE_ORCHESTRATION": "off"}
    sets = [f"name={name}", f"train.epochs={epochs}", f"train.nproc={nproc}"]
    sets.append(f"train.device={device}")
    args = [a for s in sets for a in ("-S", s)]
    py = [sys.executable, "-m", "pipeline"]
    subprocess.run([*py, "train", str(SPEC), *args], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    subprocess.run([*py, "evaluate", str(SPEC), *args], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    folder = ROOT / "runs" / name
    with (folder / "history.csv").open() as f:
        rates = [float(row["train_images_per_s"]) for row in csv.DictReader(f)]
    metrics = json.loads((folder / "metrics.json").read_text())
    shutil.rmtree(folder)
    return {"images_per_s": rates, "test_accuracy": metrics["test_accuracy"]}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--nproc", type=int)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    import torch

    from pipeline.runtime import cpu_model

    nproc = args.nproc or (torch.cuda.device_count() if args.device == "cuda" else 2)
    if nproc < 2:
        print(f"only {nproc} {args.device} device(s): nothing to compare (DDP runs one "
              "process per GPU)")  # fmt: skip
        return 0
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else cpu_model()
    print(f"{where}, {os.cpu_count()} cores, torch {torch.__version__}, {args.epochs} epochs")
    results: dict[int, list[dict]] = {1: [], nproc: []}
    for r in range(args.rounds):
        for n in (1, nproc) if r % 2 == 0 else (nproc, 1):
            out = _run(f"bench-ddp-{n}", n, args.epochs, args.device)
            results[n].append(out)
            rates = ", ".join(f"{x:,.0f}" for x in out["images_per_s"])
            print(f"round {r + 1}, {n} process(es): {rates} img/s per epoch; test accuracy "
                  f"{out['test_accuracy']:.4f}")  # fmt: skip

    def rate(n: int) -> float:  # the median over rounds of each run's last epoch
        return statistics.median(o["images_per_s"][-1] for o in results[n])

    ratio = rate(nproc) / rate(1)
    print(f"{nproc} processes: {rate(nproc):,.0f} img/s vs 1 process {rate(1):,.0f}: "
          f"{ratio:.2f}x")  # fmt: skip
    if args.json:
        payload = {"device": where, "nproc": nproc, "results": results, "ratio": ratio}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Batch-norm folding: outputs equal, CPU latency before/after, on the example specs.

Batch-norm statistics are set to random values first (an untrained BN is the identity, which
would hide a wrong fold).

    .venv/bin/python benchmarks/fold.py
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.export import fold_report
from pipeline.model.build import build_model
from pipeline.spec import load_spec

SPECS = Path(__file__).resolve().parents[1] / "specs"
CASES = {
    "fashion_bn_before_activation": [],
    "mnist_convnet + batch_norm: before": [
        "model.defaults.conv2d.batch_norm=before",
        "model.defaults.conv2d.bias=false",
    ],
    "fashion_bn_mlp (BN after activation)": [],
}


def main() -> None:
    torch.manual_seed(0)
    print(
        "| model | folded | max abs diff | batch 1 ms before -> after "
        "| batch 64 ms before -> after |"
    )
    print("| --- | --- | --- | --- | --- |")
    for label, overrides in CASES.items():
        spec = load_spec(SPECS / f"{label.split()[0]}.yaml", overrides)
        model = build_model(spec).eval()
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)
        _, report = fold_report(model, spec.model.resolved_input_shape(), repeats=50)
        ms = report["latency_ms"]
        print(
            f"| {label} | {len(report['folded'])} | {report['max_abs_diff']:.1e} | "
            f"{ms['before']['1']:.3f} -> {ms['after']['1']:.3f} | "
            f"{ms['before']['64']:.2f} -> {ms['after']['64']:.2f} |"
        )


if __name__ == "__main__":
    main()

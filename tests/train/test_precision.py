"""Training precision on the CPU: bf16 autocast where the CPU has native bf16, fp32 elsewhere;
``auto`` is bf16 only where the CPU has AMX (where bf16 is clearly faster). What ran is
recorded in train.json, run.json and metrics.json. Detected here, never assumed: the same
tests pass on an AMD EPYC (AVX-512 BF16, no AMX), an Intel Xeon with AMX, or a CPU with
neither."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline import runtime
from pipeline.spec import load_spec_text
from pipeline.stages import evaluate
from pipeline.train.loop import train

CPU = torch.device("cpu")
NATIVE = runtime.bf16_supported(CPU)
AMX = bool(torch.cpu._is_amx_tile_supported())

SPEC = """\
name: prec
seed: 0
data:
  dataset: mnist
  subset: {train_per_class: 60, test_per_class: 20}
  validation: {fraction: 0.2}
model:
  layers:
    - {type: conv2d, filters: 8, kernel_size: 3, activation: relu}
    - {type: max_pool2d}
    - {type: flatten}
    - {type: dense, units: 10, activation: softmax}
optimizer: {type: adam, lr: 3.0e-3}
train: {epochs: 3, batch_size: 32, device: cpu}
"""


def test_the_cpu_precision_follows_what_the_cpu_has():
    assert runtime.autocast_dtype("fp32", CPU) is None
    assert runtime.autocast_dtype("fp16", CPU) is None  # no fast fp16 on CPUs
    assert runtime.autocast_dtype("bf16", CPU) == (torch.bfloat16 if NATIVE else None)
    assert runtime.cpu_bf16_fast() == (AMX and NATIVE)
    assert runtime.autocast_dtype("auto", CPU) == (torch.bfloat16 if AMX and NATIVE else None)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_run_records_the_precision_it_trained_in(tmp_path, mirror, monkeypatch, precision):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    spec = load_spec_text(SPEC, [f"train.precision={precision}"])
    result = train(spec, log=lambda _m: None)
    ran = "bf16" if precision == "bf16" and NATIVE else "fp32"
    folder = Path(result.run_dir)
    assert json.loads((folder / "train.json").read_text())["precision"] == ran
    assert json.loads((folder / "run.json").read_text())["device"]["precision"] == ran
    assert result.history[-1]["val_accuracy"] >= 0.75  # bf16 trains, not only runs
    metrics = evaluate(spec, log=lambda _m: None)
    assert metrics["train_precision"] == ran and metrics["train_world_size"] == 1

"""Mistakes a user can make that once escaped as tracebacks: each is now one clear line.

Every error a user can act on is a ``PipelineError``; the CLI prints its message and exits 1.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.cli import main
from pipeline.errors import ConfigurationError, PipelineError
from pipeline.train.checkpoint import CheckpointError

SPEC = """\
name: tiny
seed: 0
data:
  dataset: mnist
  subset: {train_per_class: 20, test_per_class: 5}
  validation: {fraction: 0.2}
model:
  layers:
    - {type: flatten}
    - {type: dense, units: 16, activation: relu}
    - {type: dense, units: 10, activation: softmax}
train: {epochs: 1, batch_size: 32}
"""


@pytest.fixture
def spec_file(tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny.yaml"
    path.write_text(SPEC)
    return path


def one_line_error(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    for needle in needles:
        assert needle in line, line
    return line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_device_on_a_machine_without_one_is_a_one_line_error(spec_file, capsys):
    code = main(["train", str(spec_file), "-S", "train.device=cuda"])
    one_line_error(capsys, code, "'cuda'", "CUDA is not available", "device: auto")


def test_binary_cross_entropy_on_ten_outputs_is_a_located_error(spec_file, capsys):
    """Caught at validate time now (the output-activation check), located in the override."""
    code = main(["train", str(spec_file), "-S", "train.loss=binary_cross_entropy"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if "error: " in ln]
    assert line.startswith("-S train.loss=binary_cross_entropy:1:1: error: train.loss: "), line
    assert "binary_cross_entropy needs one output unit; the model has 10" in line


def test_a_plateau_schedule_on_an_unrecorded_metric_is_a_one_line_error(spec_file, capsys):
    spec_file.write_text(SPEC + "schedule: {type: reduce_on_plateau, monitor: val_top3_accuracy}\n")
    code = main(["train", str(spec_file)])
    one_line_error(capsys, code, "val_top3_accuracy", "does not record")


def test_a_corrupt_checkpoint_is_a_one_line_error(spec_file, capsys):
    assert main(["train", str(spec_file)]) == 0
    best = spec_file.parent / "runs" / "tiny" / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:100])  # a truncated copy, as a killed rsync leaves
    capsys.readouterr()
    code = main(["evaluate", str(spec_file)])
    one_line_error(capsys, code, "runs/tiny/checkpoints/best.pt", "cannot read the checkpoint")


def test_a_file_that_is_no_checkpoint_is_named(spec_file, capsys):
    best = spec_file.parent / "runs" / "tiny" / "checkpoints" / "best.pt"
    best.parent.mkdir(parents=True)
    torch.save({"weights": torch.zeros(1)}, best)
    code = main(["evaluate", str(spec_file)])
    one_line_error(capsys, code, "is not a pipeline checkpoint")


def test_every_user_error_class_derives_from_the_one_base():
    from pipeline.data.sources import DataError
    from pipeline.export import ExportError
    from pipeline.model.errors import ModelBuildError
    from pipeline.orchestrate import OrchestrationError
    from pipeline.predict import PredictError
    from pipeline.spec.errors import SpecError
    from pipeline.train.loop import TrainingDiverged

    for cls in (DataError, ExportError, ModelBuildError, OrchestrationError, PredictError,
                SpecError, TrainingDiverged, CheckpointError, ConfigurationError):  # fmt: skip
        assert issubclass(cls, PipelineError), cls


def test_only_a_failed_download_is_retryable():
    from pipeline.data.builtin import download
    from pipeline.data.sources import DataError

    def offline() -> None:
        raise OSError("network is unreachable")

    with pytest.raises(DataError) as failed:
        download(offline, "MNIST", retries=2, backoff_s=0)
    assert failed.value.retryable
    assert not DataError("no such class 'cat'").retryable

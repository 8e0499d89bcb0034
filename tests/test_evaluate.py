"""Evaluation metrics against hand-computed values, and the stage on a real trained model."""

import json
import math
from pathlib import Path

import pytest
import torch

from pipeline.evaluate import evaluate, expected_calibration_error, metrics_from


def test_metrics_match_hand_computed_values():
    # 4 samples, 3 classes; predictions: 0, 1, 1, 2; labels: 0, 1, 2, 2
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    labels = torch.tensor([0, 1, 2, 2])
    m, confusion = metrics_from(probs, labels, ["a", "b", "c"], top_k=[2], bins=10)
    assert m["test_accuracy"] == 0.75
    assert m["test_top2_accuracy"] == 1.0
    expected_loss = -(math.log(0.7) + math.log(0.8) + math.log(0.3) + math.log(0.8)) / 4
    assert m["test_loss"] == pytest.approx(expected_loss)
    assert confusion.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert confusion.sum() == 4
    assert (m["precision/b"], m["recall/b"]) == (0.5, 1.0)
    assert (m["precision/c"], m["recall/c"]) == (1.0, 0.5)
    assert m["f1/c"] == pytest.approx(2 / 3)


def test_calibration_error_is_zero_when_confidence_equals_accuracy():
    probs = torch.tensor([[0.5, 0.5]] * 4)
    assert expected_calibration_error(probs, torch.tensor([0, 1, 0, 1]), 10) == pytest.approx(0)
    sure = torch.tensor([[1.0, 0.0]] * 4)
    assert expected_calibration_error(sure, torch.tensor([0, 0, 1, 1]), 10) == pytest.approx(0.5)


def test_evaluate_writes_metrics_and_confusion_for_a_trained_model(
    tmp_path: Path, mirror, monkeypatch
):
    from pipeline.spec import load_spec_text
    from pipeline.train.loop import train
    from tests.train.test_loop import CONVNET

    monkeypatch.chdir(tmp_path)
    spec = load_spec_text(CONVNET.format(name="ev", per_class=300, epochs=1))
    train(spec, log=lambda _m: None)
    metrics = evaluate(spec)
    saved = json.loads((tmp_path / "runs" / "ev" / "metrics.json").read_text())
    assert saved["test_accuracy"] == metrics["test_accuracy"] > 0.9
    rows = (tmp_path / "runs" / "ev" / "confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) == 1 + 500
    assert (tmp_path / "runs" / "ev" / "training_curves.png").stat().st_size > 5000
    assert saved["precision"] == "fp32"
    # bf16 inference: what ran is recorded, and it predicts (almost) as fp32 does
    from pipeline import runtime

    half = evaluate(
        spec.model_copy(
            update={"evaluate": spec.evaluate.model_copy(update={"precision": "bf16"})}
        ),
        log=lambda _m: None,
    )
    native = runtime.bf16_supported(torch.device("cpu"))
    assert half["precision"] == ("bf16" if native else "fp32")
    assert abs(half["test_accuracy"] - metrics["test_accuracy"]) <= 0.01
    if native:
        assert half["test_loss"] != metrics["test_loss"]  # it really ran in another precision
    # pictures turned off: DVC's evaluate stage declares their files, so each is written
    # empty (a header) or saying why, never left from the run before
    run = tmp_path / "runs" / "ev"
    before = (run / "confusion.png").read_bytes()
    off = spec.evaluate.model_copy(update={"confusion_matrix": False, "curves": False})
    evaluate(spec.model_copy(update={"evaluate": off}), log=lambda _m: None)
    assert (run / "confusion.csv").read_text() == "actual,predicted\n"
    assert (run / "roc.csv").read_text() == "curve,fpr,tpr\n"
    assert (run / "pr.csv").read_text() == "curve,recall,precision\n"
    for png in ("confusion.png", "roc_pr.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "confusion.png").read_bytes() != before


def _dropout_model(rate: float):
    from pipeline.model.build import build_model
    from pipeline.spec import load_spec_text

    spec = load_spec_text(
        f"""\
name: mc
data: {{dataset: mnist}}
model:
  input_shape: [1, 4, 4]
  layers:
    - {{type: flatten}}
    - {{type: dense, units: 32, activation: relu}}
    - {{type: batch_norm}}
    - {{type: dropout, rate: {rate}}}
    - {{type: dense, units: 10, activation: softmax}}
""",
        check=False,
    )
    return build_model(spec)


def test_mc_dropout_with_rate_zero_equals_plain_prediction():
    from pipeline.evaluate import collect, mc_dropout

    model = _dropout_model(0.0)
    batches = [(torch.rand(16, 1, 4, 4), torch.randint(0, 10, (16,)))]
    plain, _ = collect(model, batches)
    mean, spread, _ = mc_dropout(model, batches, samples=5, seed=0)
    assert torch.allclose(mean, plain, atol=1e-6) and spread.abs().max() == 0


def test_mc_dropout_spreads_and_keeps_batch_norm_in_inference_mode():
    from pipeline.evaluate import mc_dropout

    model = _dropout_model(0.5)
    bn = model.batch_norm_1
    before = bn.running_mean.clone()
    batches = [(torch.rand(16, 1, 4, 4), torch.randint(0, 10, (16,)))]
    mean, spread, _ = mc_dropout(model, batches, samples=20, seed=0)
    assert (spread > 0).all() and torch.allclose(mean.sum(dim=1), torch.ones(16))
    assert torch.equal(bn.running_mean, before) and not model.training
    again, _, _ = mc_dropout(model, batches, samples=20, seed=0)
    assert torch.equal(mean, again)

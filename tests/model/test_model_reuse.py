"""Reusing an earlier experiment's layers with its trained weights (the seeds' model_B_on_A)."""

from __future__ import annotations

import pytest
import torch

from pipeline.model import ModelBuildError, build_model, summarize
from pipeline.spec.load import load_spec

SPEC_A = """
name: a
data: {dataset: mnist}
model:
  layers:
    - {type: conv2d, filters: 4, kernel_size: 3, activation: relu, batch_norm: after}
    - {type: max_pool2d}
    - {type: flatten}
    - {type: dense, units: 10, activation: softmax}
"""


def spec_b(reuse: str) -> str:
    return f"""
name: b
data: {{dataset: mnist, classes: {{keep: [0, 1]}}}}
seed: 7
model:
  layers:
    - {reuse}
    - {{type: dense, units: 1, activation: sigmoid}}
"""


@pytest.fixture
def trained_a(tmp_path):
    """Spec A on disk with a checkpoint of weights that no fresh build would draw."""
    (tmp_path / "a.yaml").write_text(SPEC_A)
    model = build_model(load_spec(tmp_path / "a.yaml"))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
        model.conv2d_1.bn.running_mean.fill_(0.5)
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    return model


def write_b(tmp_path, reuse: str):
    (tmp_path / "b.yaml").write_text(spec_b(reuse))
    return load_spec(tmp_path / "b.yaml")


def test_reuse_loads_the_checkpoint_and_freezes(tmp_path, trained_a):
    spec = write_b(
        tmp_path, "{type: reuse, spec: a.yaml, drop_last: 1, checkpoint: ckpt.pt, trainable: false}"
    )
    model = build_model(spec)
    reused = model.reuse_1
    assert list(reused._modules) == ["conv2d_1", "max_pool2d_1", "flatten_1"]
    for key, value in trained_a.state_dict().items():
        if not key.startswith("dense_1"):
            assert torch.equal(model.state_dict()[f"reuse_1.{key}"], value), key
    assert not any(p.requires_grad for p in reused.parameters())
    assert all(p.requires_grad for p in model.dense_1.parameters())
    assert model.output_activation == "sigmoid"
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 1)
    # the frozen batch norm keeps its statistics while the head trains
    model.train()
    assert not reused.conv2d_1.bn.training
    summary = summarize(model, spec)
    assert summary.non_trainable_params == 4 * 9 + 4 + 4 * 4
    assert summary.trainable_params == 4 * 13 * 13 + 1


def test_reuse_default_checkpoint_under_runs(tmp_path, trained_a, monkeypatch):
    spec = write_b(tmp_path, "{type: reuse, spec: a.yaml, upto: flatten_1}")
    monkeypatch.chdir(tmp_path)
    best = tmp_path / "runs" / "a" / "checkpoints" / "best.pt"
    with pytest.raises(ModelBuildError, match=r"train a first: .*runs/a/checkpoints/best\.pt"):
        build_model(spec)
    best.parent.mkdir(parents=True)
    (tmp_path / "ckpt.pt").rename(best)
    model = build_model(spec)
    assert torch.equal(model.reuse_1.conv2d_1.conv.weight, trained_a.conv2d_1.conv.weight)
    assert all(p.requires_grad for p in model.reuse_1.parameters())


def test_missing_checkpoint_is_a_build_error_naming_it(tmp_path, trained_a):
    spec = write_b(tmp_path, "{type: reuse, spec: a.yaml, checkpoint: nowhere.pt}")
    with pytest.raises(ModelBuildError, match=r"train a first: .*nowhere\.pt not found"):
        build_model(spec)
    # summaries and dry runs need no checkpoint
    model = build_model(spec, load_weights=False)
    assert model.reuse_1.conv2d_1.conv.weight.shape == (4, 1, 3, 3)
    assert summarize(build_model(spec, device="meta"), spec).total_params > 0


def test_checkpoint_of_another_model_is_a_build_error(tmp_path, trained_a):
    torch.save({"model": {"conv.weight": torch.zeros(1)}}, tmp_path / "other.pt")
    spec = write_b(tmp_path, "{type: reuse, spec: a.yaml, checkpoint: other.pt}")
    with pytest.raises(ModelBuildError, match="does not fit"):
        build_model(spec)


def test_reusing_every_layer_keeps_the_source_output_activation(tmp_path, trained_a):
    spec = write_b(tmp_path, "{type: reuse, spec: a.yaml, drop_last: 0, checkpoint: ckpt.pt}")
    model = build_model(spec)
    probs = model.reuse_1(torch.rand(3, 1, 28, 28))
    assert torch.allclose(probs.sum(1), torch.ones(3))  # A's softmax is a real layer here
    assert model.output_activation == "sigmoid"


def test_a_whole_reused_model_at_the_end_still_returns_logits(tmp_path, trained_a):
    (tmp_path / "c.yaml").write_text(
        "name: c\ndata: {dataset: mnist}\nmodel:\n  layers:\n"
        "    - {type: reuse, spec: a.yaml, drop_last: 0, checkpoint: ckpt.pt}\n"
    )
    model = build_model(load_spec(tmp_path / "c.yaml"))
    assert model.output_activation == "softmax"
    x = torch.rand(3, 1, 28, 28)
    model.eval()
    trained_a.eval()
    assert torch.allclose(model(x), trained_a(x), atol=1e-6)  # logits, as A's own forward
    assert torch.allclose(model.predict_proba(x), trained_a.predict_proba(x), atol=1e-6)

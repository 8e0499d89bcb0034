"""Batch-norm folding, TorchScript and ONNX export: real torch models, outputs compared."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.export import (
    ExportError,
    batch_norm_names,
    export,
    fold_batch_norm,
    fold_report,
    read_metadata,
)
from pipeline.model.build import Network, build_model
from pipeline.spec import load_spec_text

SPEC = """\
name: fold
seed: 3
data: {{dataset: fashion_mnist, image_size: 12, classes: {{keep: [0, 1, 2]}}}}
model:
  layers:
{layers}
"""

# conv with batch_norm: before; conv (no activation) + separate batch_norm; dense without bias +
# batch_norm; and three that cannot fold: first in the network, after an activation inside a
# block, after a separate activation layer.
MIXED = """\
    - {type: batch_norm}
    - {type: conv2d, filters: 4, kernel_size: 3, batch_norm: before, activation: relu}
    - {type: conv2d, filters: 5, kernel_size: 3, bias: false}
    - {type: batch_norm}
    - {type: conv2d, filters: 4, kernel_size: 3, stride: 2, padding: same, activation: relu,
       batch_norm: after}
    - {type: flatten}
    - {type: dense, units: 8, bias: false}
    - {type: batch_norm}
    - {type: elu}
    - {type: batch_norm}
    - {type: dropout, rate: 0.3}
    - {type: dense, units: 3, activation: softmax}
"""
META = {
    "classes": ["top", "trouser", "pullover"],
    "image_shape": [1, 12, 12],
    "normalization": {"mean": [0.286], "std": [0.353]},
}


def build(layers: str = MIXED) -> Network:
    model = build_model(spec_of(layers), load_weights=False)
    randomize_batch_norms(model)
    return model.eval()


def randomize_batch_norms(model: nn.Module, seed: int = 1) -> None:
    """Non-trivial statistics: a fold that ignored μ, σ, γ or β would change the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.3)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g))


def inputs(n: int = 16) -> torch.Tensor:
    return torch.randn((n, 1, 12, 12), generator=torch.Generator().manual_seed(7))


def spec_of(layers: str = MIXED):
    return load_spec_text(SPEC.format(layers=layers))


@torch.inference_mode()
def test_fold_every_foldable_kind_and_outputs_equal():
    model = build()
    folded, names = fold_batch_norm(model)
    assert names == ["conv2d_1.bn", "batch_norm_2", "batch_norm_3"]
    # after a nonlinearity (or first in the network) there is nothing to fold into
    assert batch_norm_names(folded) == ["batch_norm_1", "conv2d_3.bn", "batch_norm_4"]
    assert len(batch_norm_names(folded)) < len(batch_norm_names(model)) == 6
    x = inputs()
    diff = float((model(x) - folded(x)).abs().max())
    assert diff < 1e-5, diff
    assert model(x).abs().max() > 0.1  # not trivially equal
    # the dense without bias got one; the original model is untouched
    assert folded.dense_1.core.bias is not None and model.dense_1.core.bias is None
    assert isinstance(model.conv2d_1.bn, nn.BatchNorm2d) and not folded.training


@torch.inference_mode()
def test_fold_report_numbers():
    _, report = fold_report(build(), [1, 12, 12], repeats=3)
    assert report["folded"] == ["conv2d_1.bn", "batch_norm_2", "batch_norm_3"]
    assert report["max_abs_diff"] < 1e-5
    lat = report["latency_ms"]
    assert set(lat) == {"before", "after"} and set(lat["after"]) == {"1", "64"}
    assert all(v > 0 for side in lat.values() for v in side.values())


@torch.inference_mode()
def test_batch_norm_only_after_nonlinearities_is_left_alone():
    model = build("""\
    - {type: flatten}
    - {type: batch_norm}
    - {type: dense, units: 6, activation: elu, batch_norm: after}
    - {type: dense, units: 6, activation: relu}
    - {type: batch_norm}
    - {type: dense, units: 3, activation: softmax}
""")
    folded, names = fold_batch_norm(model)
    assert names == []
    assert batch_norm_names(folded) == ["batch_norm_1", "dense_1.bn", "batch_norm_2"]
    x = inputs()
    assert torch.equal(model(x), folded(x))


@torch.inference_mode()
def test_fold_in_plain_torch_sequentials_and_trained_statistics():
    # A generic chain (torchvision's conv-norm-act blocks look like this), stats from training.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8)),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5),
        nn.BatchNorm1d(5),
    )
    model.train()
    with torch.no_grad():
        for _ in range(20):
            model(torch.randn(32, 3, 8, 8) * 3 + 1)
    model.eval()
    folded, names = fold_batch_norm(model)
    assert names == ["1", "3.1", "6"] and batch_norm_names(folded) == []
    x = torch.randn(10, 3, 8, 8)
    assert float((model(x) - folded(x)).abs().max()) < 1e-5


def test_torchscript_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PIPELINE_RUNS_DIR", str(tmp_path / "runs"))  # its record of the export
    model = build()
    paths = export(
        spec_of(), model, tmp_path, ["torchscript"], fold=True, prepared_meta=META, repeats=2
    )
    assert paths["torchscript"] == tmp_path / "fold.pt"
    extra = {"pipeline.json": ""}
    with warnings.catch_warnings():  # TorchScript's deprecation notice
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(paths["torchscript"]), _extra_files=extra)
    x = inputs(5)  # another batch size than the trace's
    with torch.inference_mode():
        diff = float((loaded(x) - model(x)).abs().max())
    assert diff < 1e-5, diff
    meta = json.loads(extra["pipeline.json"])
    assert meta == read_metadata(paths["torchscript"])
    assert meta["classes"] == META["classes"] and meta["image_shape"] == [1, 12, 12]
    assert meta["mean"] == [0.286] and meta["std"] == [0.353]
    assert meta["output_activation"] == "softmax" and meta["resize"] == "torch_bilinear_antialias"
    assert meta["batch_norm_folded"] == ["conv2d_1.bn", "batch_norm_2", "batch_norm_3"]
    summary = json.loads(paths["metadata"].read_text())
    assert summary["fold"]["max_abs_diff"] < 1e-5 and summary["files"] == {"torchscript": "fold.pt"}


def test_onnx_matches_pytorch_and_carries_metadata(tmp_path: Path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = build()
    paths = export(spec_of(), model, tmp_path, ["onnx"], prepared_meta=META)
    assert json.loads(paths["metadata"].read_text())["fold"] is None
    session = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    x = inputs(7)  # the batch axis is dynamic
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.inference_mode():
        want = model(x)
    assert float((torch.from_numpy(got) - want).abs().max()) < 1e-4
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["pipeline.json"])["classes"] == META["classes"]
    assert read_metadata(paths["onnx"])["classes"] == META["classes"]


def test_unknown_format_is_an_error(tmp_path: Path):
    with pytest.raises(ExportError, match="unknown export format"):
        export(spec_of(), build(), tmp_path, ["tflite"], prepared_meta=META)

"""Predict on real Fashion-MNIST test images saved as PNG files, with a briefly trained model."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from pipeline.export import export_run
from pipeline.predict import PredictError, predict_files
from pipeline.spec import load_spec
from tests.conftest import MIRROR

SPEC = """\
name: fashion_predict
seed: 0
data:
  dataset: fashion_mnist
  subset: {train_per_class: 300, test_per_class: 2}
  validation: {fraction: 0.1}
  normalize: standardize
model:
  layers:
    - {type: flatten}
    - {type: dense, units: 128, bias: false, batch_norm: before, activation: relu}
    - {type: dropout, rate: 0.2}
    - {type: dense, units: 10, activation: softmax}
optimizer: {type: adam, lr: 2e-3}
train: {epochs: 2, batch_size: 32}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Train once for the module; the test split's images written as PNG files (true labels)."""
    if not (MIRROR / "FashionMNIST" / "raw").is_dir():
        why = f"dataset mirror {MIRROR} is missing (set PIPELINE_DATA_MIRROR)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    from pipeline.data.prepare import prepare
    from pipeline.train.loop import train

    root = tmp_path_factory.mktemp("predict")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIPELINE_DATA_MIRROR", str(MIRROR))
        mp.setenv("PIPELINE_DATA_CACHE", str(root / "cache"))
        mp.delenv("PIPELINE_RUNS_DIR", raising=False)
        mp.chdir(root)
        spec_path = root / "fashion_predict.yaml"
        spec_path.write_text(SPEC)
        spec = load_spec(spec_path)
        prepared = prepare(spec)
        train(spec, prepared=prepared, log=lambda _m: None)
        x, y = prepared.split("test")
        files = []
        for i, (img, label) in enumerate(zip(np.asarray(x), y.tolist(), strict=True)):
            path = root / "images" / f"{i:02d}.png"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(img[0]).save(path)
            files.append((path, prepared.classes[label]))
        yield {"root": root, "spec": spec_path, "files": files, "classes": prepared.classes}


@pytest.fixture
def here(run: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("PIPELINE_DATA_MIRROR", str(MIRROR))
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(run["root"] / "cache"))
    monkeypatch.delenv("PIPELINE_RUNS_DIR", raising=False)
    monkeypatch.chdir(run["root"])
    return run


def test_predict_from_spec_mostly_right(here: dict):
    paths = [p for p, _ in here["files"]]
    results = predict_files(here["spec"], paths)
    assert [r["file"] for r in results] == [str(p) for p in paths]
    right = sum(r["class"] == label for r, (_, label) in zip(results, here["files"], strict=True))
    assert right >= 0.7 * len(paths), (right, len(paths))
    for r in results:
        assert r["error"] is None
        probs = list(r["probabilities"].values())
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
        assert next(iter(r["probabilities"])) == r["class"] and r["probability"] == probs[0]
        assert 0 < r["probability"] <= 1 and set(r["probabilities"]) <= set(here["classes"])


def test_corrupt_and_missing_files_get_errors_others_succeed(here: dict):
    bad = here["root"] / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    good = [p for p, _ in here["files"][:3]]
    paths = [good[0], bad, good[1], here["root"] / "missing.png", good[2]]
    results = predict_files(here["spec"], paths)
    assert [r["error"] is None for r in results] == [True, False, True, False, True]
    assert "cannot read image" in results[1]["error"] and results[1]["class"] is None
    alone = predict_files(here["spec"], good)
    assert [r["class"] for r in results if r["error"] is None] == [r["class"] for r in alone]


def test_resized_rgb_file_is_converted_like_prepare(here: dict):
    # A 56x56 RGB copy of a 28x28 grey image: converted to L and resized back by the same
    # antialiased bilinear as prepare; the prediction should not change.
    path, _ = here["files"][0]
    big = here["root"] / "big.png"
    Image.open(path).convert("RGB").resize((56, 56), Image.Resampling.NEAREST).save(big)
    a, b = predict_files(here["spec"], [path, big])
    assert b["error"] is None and a["class"] == b["class"]
    # not the same pixels (the downscale blurs: 7/255 off on average), so the probability moves
    # by what the model makes of that (0.12 for this one); the class must not change
    assert abs(a["probability"] - b["probability"]) < 0.15


def test_exported_torchscript_and_onnx_agree_with_spec(here: dict):
    paths = [p for p, _ in here["files"]]
    formats = ["torchscript"]
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401

        formats.append("onnx")
    except ImportError:
        pass
    out = export_run(load_spec(here["spec"]), formats, fold=True, out_dir=here["root"] / "ex")
    from_spec = predict_files(here["spec"], paths)
    for fmt in formats:
        from_file = predict_files(out[fmt], paths)
        assert [r["class"] for r in from_file] == [r["class"] for r in from_spec], fmt
        for a, b in zip(from_file, from_spec, strict=True):
            assert abs(a["probability"] - b["probability"]) < 1e-4


def test_mc_dropout_gives_mean_and_spread(here: dict):
    paths = [p for p, _ in here["files"][:6]]
    plain = predict_files(here["spec"], paths)
    mc = predict_files(here["spec"], paths, mc_samples=8)
    assert all(r["spread"] >= 0 for r in mc) and any(r["spread"] > 0 for r in mc)
    assert "spread" not in plain[0]
    agree = sum(a["class"] == b["class"] for a, b in zip(mc, plain, strict=True))
    assert agree >= 4
    with pytest.raises(PredictError, match="MC dropout needs the spec"):
        predict_files(here["root"] / "model.pt", paths, mc_samples=8)


def test_checkpoint_is_not_an_export(here: dict):
    ckpt = here["root"] / "runs" / "fashion_predict" / "checkpoints" / "best.pt"
    with pytest.raises(PredictError, match="pass its spec"):
        predict_files(ckpt, [here["files"][0][0]])

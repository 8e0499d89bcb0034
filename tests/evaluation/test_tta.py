"""Test-time augmentation: what each pass does to a model's predictions, and the stage's
tta_ metrics, files and DVC plots after a tiny run on real MNIST."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from pipeline.evaluate import collect, evaluate
from pipeline.evaluation import tta
from pipeline.spec import load_spec_text

ROOT = Path(__file__).resolve().parents[2]
SPEC = """\
name: {name}
seed: 0
data:
  dataset: mnist
  subset: {{train_per_class: 20, test_per_class: 10}}
model:
  layers: {layers}
optimizer: {{type: adam, lr: 1e-2}}
train: {{epochs: 1, batch_size: 50}}
augment: {{transforms: [{{type: rotation, degrees: 20}}, {{type: zoom, range: 0.1}}]}}
evaluate: {{tta: {tta}}}
"""
# Global average pooling first: a mirrored image has the same mean per channel, so the model
# predicts a mirror exactly as the image. A dense layer on the pixels is not mirror-invariant.
POOLED = "[{type: global_avg_pool2d}, {type: dense, units: 10, activation: softmax}]"
DENSE = "[{type: flatten}, {type: dense, units: 10, activation: softmax}]"


def _spec(tta: str, layers: str = DENSE, name: str = "tta"):
    return load_spec_text(SPEC.format(name=name, layers=layers, tta=tta))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tta")


@pytest.fixture
def prepared(workdir: Path, mirror, monkeypatch: pytest.MonkeyPatch):
    from pipeline.data.prepare import prepare

    monkeypatch.chdir(workdir)
    return prepare(_spec("{}"))


def _predict(spec, prepared, model):
    """The plain probabilities and those of each extra pass."""
    from pipeline.data.loader import BatchLoader

    plain, _ = collect(model, BatchLoader.from_prepared(prepared, "test", 64))
    extra = [collect(model, p.loader)[0] for p in tta.passes(spec, prepared, device="cpu")]
    return plain, extra


def test_a_mirror_changes_nothing_for_a_mirror_invariant_model_and_something_otherwise(prepared):
    from pipeline.model.build import build_model

    for layers, invariant in ((POOLED, True), (DENSE, False)):
        spec = _spec("{flip: true}", layers)
        torch.manual_seed(0)
        plain, extra = _predict(spec, prepared, build_model(spec))
        assert len(extra) == 1
        assert torch.allclose(extra[0], plain, atol=1e-6) == invariant
        assert torch.allclose(tta.average(plain, extra), plain, atol=1e-6) == invariant


def test_no_pass_is_the_plain_prediction_exactly_and_augment_passes_are_seeded(prepared):
    from pipeline.model.build import build_model

    spec = _spec("{augment: 3}")
    torch.manual_seed(0)
    model = build_model(spec)
    plain, none = _predict(_spec("{}"), prepared, model)
    assert none == [] and torch.equal(tta.average(plain, none), plain)
    _, extra = _predict(spec, prepared, model)
    _, again = _predict(spec, prepared, model)
    assert len(extra) == 3 and all(torch.equal(a, b) for a, b in zip(extra, again, strict=True))
    assert not torch.allclose(extra[0], extra[1])  # each pass draws its own transforms
    assert not torch.allclose(extra[0], plain)


def test_the_stage_reports_tta_metrics_beside_unchanged_plain_ones_and_every_plot(
    workdir: Path, mirror, monkeypatch: pytest.MonkeyPatch
):
    from pipeline.train.loop import train

    monkeypatch.chdir(workdir)
    spec = _spec("{flip: true, augment: 2}", name="stage")
    train(spec, log=lambda _m: None)
    lines: list[str] = []
    bare = _spec("null", name="stage")
    plain_only = bare.evaluate.model_copy(update={"curves": False, "confusion_matrix": False})
    plain = evaluate(bare.model_copy(update={"evaluate": plain_only}), log=lambda _m: None)
    with_tta = evaluate(spec, log=lines.append)
    assert with_tta["tta_passes"] == 4
    for key in ("test_accuracy", "test_loss", "macro_f1", "ece"):
        assert with_tta[key] == plain[key]  # the plain metrics do not move
        assert f"tta_{key}" in with_tta and f"tta_{key}" not in plain
    assert with_tta["tta_test_loss"] != plain["test_loss"]
    assert any("test-time augmentation (4 passes" in line for line in lines)
    run = workdir / "runs" / "stage"
    saved = json.loads((run / "metrics.json").read_text())
    assert 0 <= saved["roc_auc_macro"] <= 1 and "pr_auc/7" in saved
    with Image.open(run / "confusion.png") as image:  # 10 classes, two annotated panels
        assert image.size == (1650, 830)
    # every plot dvc.yaml's evaluate stage declares is there, and DVC's renderer fills the
    # custom template of the curves
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["evaluate"]["do"]
    for entry in stage["plots"]:
        ((path, props),) = entry.items()
        written = Path(path.replace("${item}", "stage"))
        assert written.is_file() and written.stat().st_size > 100, path
        if props.get("template") == "curves":
            _render(written, props)


def _render(path: Path, props: dict) -> None:
    import csv

    from dvc_render.vega import VegaRenderer

    rows = [row | {"rev": "workspace"} for row in csv.DictReader(path.open())]
    renderer = VegaRenderer(rows, str(path), template_dir=str(ROOT / ".dvc" / "plots"), **props)
    filled = renderer.get_filled_template()
    assert filled["encoding"]["x"]["field"] == props["x"]
    assert filled["encoding"]["color"]["field"] == "curve"
    assert len(filled["data"]["values"]) == len(rows)

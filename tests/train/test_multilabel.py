"""Multi-label classification on a folder of real MNIST pairs: two digits side by side,
labelled with both. Training, the history's metrics, evaluate's metrics.json, and the errors
of a bad labels file or head."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.prepare import prepare
from pipeline.data.raw import DataError
from pipeline.evaluate import evaluate
from pipeline.predict import predict_files
from pipeline.spec import SpecError, load_spec
from pipeline.train.loop import train
from pipeline.train.multilabel import counts, scores

DIGITS = 4  # classes 0..3: a pair shows one or two of them


def idx(mirror: Path, name: str) -> np.ndarray:
    with gzip.open(mirror / "MNIST" / "raw" / f"{name}.gz") as f:
        data = f.read()
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(data[3])]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * data[3]).reshape(shape)


def pairs_folder(root: Path, mirror: Path, split: str, n: int, seed: int) -> Path:
    """``n`` images of two MNIST digits side by side (28x56) and ``labels.csv``."""
    prefix = "train" if split == "train" else "t10k"
    x, y = idx(mirror, f"{prefix}-images-idx3-ubyte"), idx(mirror, f"{prefix}-labels-idx1-ubyte")
    keep = np.nonzero(y < DIGITS)[0][: 40 * n]
    rng = np.random.default_rng(seed)
    folder = root / split
    folder.mkdir(parents=True)
    lines = ["file,labels"]
    for i in range(n):
        a, b = rng.choice(keep, 2, replace=False)
        Image.fromarray(np.concatenate([x[a], x[b]], axis=1)).save(folder / f"{i:04d}.png")
        lines.append(f"{i:04d}.png,{' '.join(sorted({f'd{y[a]}', f'd{y[b]}'}))}")
    (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


SPEC = """\
name: pairs
seed: 0
data:
  dataset: image_folder
  path: data/train
  labels_file: data/train.csv
  test_path: data/test
  test_labels_file: data/test.csv
  multi_label: true
  color_mode: grayscale
  image_size: [28, 56]
  validation: {{fraction: 0.15}}
model:
  layers:
    - {{type: flatten}}
    - {{type: dense, units: 64, activation: relu}}
    - {{type: dense, units: {units}, activation: {head}}}
optimizer: {{type: adam, lr: 3e-3}}
train: {{epochs: 3, batch_size: 32, early_stopping: {{monitor: val_micro_f1, patience: 5}}}}
{extra}
"""


def spec_in(root: Path, units: int = DIGITS, head: str = "sigmoid", overrides=()):
    path = root / "pairs.yaml"
    path.write_text(SPEC.format(units=units, head=head, extra=""))
    return load_spec(path, list(overrides))


@pytest.fixture
def project(tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text("")
    pairs_folder(tmp_path / "data", mirror, "train", 600, seed=0)
    pairs_folder(tmp_path / "data", mirror, "test", 150, seed=1)
    return tmp_path


def quiet(_: str) -> None:
    pass


def test_pairs_of_digits_train_to_a_micro_f1(project):
    spec = spec_in(project)
    prepared = prepare(spec)
    assert prepared.classes == ["d0", "d1", "d2", "d3"]
    _, y = prepared.split("train")
    assert y.shape == (510, 4) and set(y.sum(1).tolist()) <= {1, 2}  # 85% of 600, multi-hot
    assert prepared.meta["counts"]["train"]["d0"] == int(y[:, 0].sum())
    result = train(spec, prepared=prepared, log=quiet)
    last = result.history[-1]
    assert last["val_micro_f1"] >= 0.85, last
    assert {"val_macro_f1", "val_subset_accuracy", "val_hamming_loss", "f1/d3"} <= set(last)
    metrics = evaluate(spec, prepared=prepared, log=quiet)
    assert metrics["test_micro_f1"] >= 0.85, metrics
    assert 0 <= metrics["test_hamming_loss"] <= 0.1
    assert metrics["roc_auc_macro"] >= 0.9 and "pr_auc/d3" in metrics  # per-class curves
    assert (project / "runs" / "pairs" / "roc.csv").is_file()
    # no one confusion matrix for multi-label, yet the files DVC's evaluate stage declares are
    # there: the table without rows, the picture saying why
    assert (project / "runs" / "pairs" / "confusion.csv").read_text() == "actual,predicted\n"
    assert (project / "runs" / "pairs" / "confusion.png").stat().st_size > 1000
    assert {"precision/d0", "recall/d0", "f1/d0", "test_macro_f1", "test_subset_accuracy"} <= set(
        json.loads((project / "runs" / "pairs" / "metrics.json").read_text())
    )
    files = sorted((project / "data" / "test").glob("*.png"))[:20]
    truth = dict(
        line.split(",") for line in (project / "data" / "test.csv").read_text().splitlines()[1:]
    )
    got = predict_files(project / "pairs.yaml", files)
    for entry in got:  # predict names every class at or above the threshold
        assert entry["labels"] == sorted(c for c, p in entry["probabilities"].items() if p >= 0.5)
    right = sum(e["labels"] == truth[Path(e["file"]).name].split() for e in got)
    assert right >= 12, got  # about 72% of the test pairs have every class right


def test_pairs_of_digits_train_with_the_focal_loss_and_mixup(project):
    spec = spec_in(
        project, overrides=["train.loss=focal", "augment.mixup={alpha: 0.2}", "name=pairs_focal"]
    )
    result = train(spec, prepared=prepare(spec), log=quiet)
    first, *_, last = result.history
    assert last["loss"] < first["loss"] and last["val_micro_f1"] >= 0.8, last


def test_the_metrics_by_hand():
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    pred = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 1], [0, 1, 1]]).bool()
    tp, fp, fn, exact, wrong = counts(pred, y)
    got = scores(tp, fp, fn, float(exact), float(wrong), 4, ["a", "b", "c"])
    # a: tp 2; b: tp 2, fp 1 (F1 0.8); c: tp 1, fp 1, fn 1 (F1 0.5); pooled: tp 5, fp 2, fn 1
    assert got["f1/a"] == 1 and got["precision/b"] == pytest.approx(2 / 3)
    assert got["f1/b"] == pytest.approx(0.8) and got["recall/c"] == 0.5
    assert got["micro_f1"] == pytest.approx(10 / 13)
    assert got["macro_f1"] == pytest.approx(2.3 / 3)
    assert got["subset_accuracy"] == 0.25  # only the second row is right in every class
    assert got["hamming_loss"] == 3 / 12


def test_a_label_the_classes_do_not_list_is_located_in_the_file(project):
    text = (project / "data" / "train.csv").read_text().replace("d3", "d9", 1)
    (project / "data" / "train.csv").write_text(text)
    spec = spec_in(project, overrides=["data.label_names=[d0, d1, d2, d3]"])
    with pytest.raises(DataError) as err:
        prepare(spec)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "d9" in row)
    assert f"train.csv:{line}: unknown class 'd9'" in str(err.value)
    assert "d0, d1, d2, d3" in str(err.value)


def test_a_test_label_the_training_file_lacks_is_an_error(project):
    with (project / "data" / "test.csv").open("a") as f:
        f.write("0000.png,d1 dd2\n")
    (project / "data" / "test.csv").write_text(
        (project / "data" / "test.csv").read_text().replace("0000.png,", "x.png,", 1)
    )
    (project / "data" / "test" / "0000.png").rename(project / "data" / "test" / "x.png")
    with pytest.raises(DataError, match=r"test.csv:\d+: unknown class 'dd2'; did you mean 'd2'"):
        prepare(spec_in(project))


def problems(root: Path, **kw) -> list[str]:
    with pytest.raises(SpecError) as err:
        spec_in(root, **kw)
    return [p.format(source=False) for p in err.value.problems]


def test_the_head_must_be_a_sigmoid_per_class_with_binary_cross_entropy(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    spec_in(tmp_path)  # a sigmoid over 4 outputs: the right head for multi-label data
    (softmax,) = problems(tmp_path, head="softmax")
    assert "pairs.yaml:17:" in softmax and "model.layers[2]" in softmax, softmax
    (ce,) = problems(tmp_path, overrides=["train.loss=cross_entropy"])
    assert "train.loss: multi-label data takes binary cross-entropy" in ce
    (names,) = problems(tmp_path, units=3, overrides=["data.label_names=[a, b, c, d]"])
    assert "data.label_names: the model has 3 outputs but data.label_names lists 4" in names


def test_label_fields_need_multi_label_and_an_image_folder(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    found = "\n".join(problems(tmp_path, units=1, overrides=["data.multi_label=false"]))
    assert "pairs.yaml:6:" in found and "data.labels_file: labels_file is for multi-label" in found
    assert "data.test_labels_file" in found
    found = "\n".join(problems(tmp_path, overrides=["data.labels_file=null"]))
    assert "data.multi_label: multi_label needs labels_file" in found


def test_an_export_with_a_bad_threshold_is_refused_before_predicting(tmp_path):
    from pipeline.export_check import METADATA_FORMAT, ExportFileError, parse_metadata

    meta = {
        "format": METADATA_FORMAT, "classes": ["a", "b"], "image_shape": [1, 28, 56],
        "resize": "pil_bilinear", "mean": [0.0], "std": [1.0], "output_activation": "sigmoid",
    }  # fmt: skip
    assert parse_metadata(json.dumps(meta | {"threshold": 0.4}), tmp_path)["threshold"] == 0.4
    with pytest.raises(ExportFileError, match="threshold must be a number between 0 and 1"):
        parse_metadata(json.dumps(meta | {"threshold": "high"}), tmp_path)


def test_offline_copies_keep_their_multi_hot_labels(project):
    spec = spec_in(
        project,
        overrides=[
            "augment.mode=offline",
            "augment.factor=1",
            "augment.transforms=[{type: shift, width: 0.1}]",
        ],
    )
    x, y = prepare(spec).split("train")
    assert y.shape == (1020, 4) and torch.equal(y[:510], y[510:])
    assert not torch.equal(x[:510], x[510:])  # the copies are shifted, their labels the same


def test_a_head_of_the_wrong_width_is_one_message_once_the_classes_are_known(project):
    from pipeline.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="the model has 3 outputs but the labels file"):
        train(spec_in(project, units=3), log=quiet)
    (twice,) = problems(project, overrides=["data.label_names=[d0, d0, d1, d2]"])
    assert "data.label_names: label_names needs two or more classes, each once" in twice


def test_what_needs_one_class_per_image_is_refused_for_multi_label(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    found = problems(
        tmp_path,
        overrides=[
            "train.class_weights=balanced",
            "train.loss=focal",  # the sigmoid one per class: not refused
            "train.sampler=balanced",
            "evaluate.tta={flip: true}",
        ],
    )
    text = "\n".join(found)
    assert len(found) == 3, text
    assert "train.class_weights: class_weights weigh a sample by its one class" in text
    assert "focal" not in text
    assert "train.sampler: sampler: balanced draws by each image's one class" in text
    assert "evaluate.tta: evaluate.tta is not computed for multi-label data" in text
    assert all(p.startswith("-S ") for p in found), text  # located at the override


def test_the_multi_label_loss_is_the_table_s_binary_cross_entropy_per_class():
    from pipeline.errors import ConfigurationError
    from pipeline.train.losses import LOSS_BUILDERS
    from pipeline.train.metrics import loss_fn

    logits, y = torch.randn(5, 3), torch.randint(0, 2, (5, 3))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, y.float())
    for kind in ("auto", "binary_cross_entropy"):
        got = loss_fn(kind, 3, 0.0, multi_label=True)(logits, y)
        torch.testing.assert_close(got, expected)
    assert "binary_cross_entropy" in LOSS_BUILDERS
    with pytest.raises(ConfigurationError, match="multi-label data needs binary_cross_entropy"):
        loss_fn("cross_entropy", 3, 0.0, multi_label=True)
    # the focal loss per class: the binary cross-entropy at gamma 0; at gamma 2 each (image,
    # class) term scaled by (1 - p_t)^2, so confident right outputs count for almost nothing
    focal0 = loss_fn("focal", 3, 0.0, gamma=0.0, multi_label=True)(logits, y)
    torch.testing.assert_close(focal0, expected)
    easy = torch.tensor([[6.0, -6.0, 0.0]])
    target = torch.tensor([[1, 0, 1]])
    per = torch.nn.functional.binary_cross_entropy_with_logits(
        easy, target.float(), reduction="none"
    )
    p_t = torch.where(target == 1, easy.sigmoid(), 1 - easy.sigmoid())
    focal2 = loss_fn("focal", 3, 0.0, gamma=2.0, multi_label=True)(easy, target)
    torch.testing.assert_close(focal2, ((1 - p_t) ** 2 * per).mean())
    assert focal2 < 0.3 * per.mean()  # the uncertain third output is nearly all of it
    mixed = torch.tensor([[0.7, 0.0, 0.3]])  # mixup's rows of two multi-hot images
    assert loss_fn("focal", 3, 0.0, multi_label=True)(easy, mixed) > 0
    with pytest.raises(ConfigurationError, match="class weights need one class per sample"):
        loss_fn("auto", 3, 0.0, [1.0, 2.0, 1.0], multi_label=True)


def test_curves_of_multi_hot_labels_are_each_class_s():
    from sklearn.metrics import roc_auc_score

    from pipeline.evaluation import curves

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (40, 3))
    p = np.clip(y * 0.6 + rng.random((40, 3)) * 0.5, 0, 1)
    found = curves.compute(p, y, ["a", "b", "c"])
    for c, name in enumerate("abc"):
        assert found.roc_auc[name] == pytest.approx(roc_auc_score(y[:, c], p[:, c]))

"""Offline augmentation is made by prepare, into the prepared folder (the DVC prepare stage's
declared output), and train only reads it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from pipeline import stages
from pipeline.data import DataError, load_prepared, prepare, prepared_dir
from pipeline.spec import load_spec_text
from pipeline.train.offline import offline_set
from tests.data.conftest import need_mirror

REPO = Path(__file__).resolve().parents[2]
ROTATE = {"mode": "offline", "factor": 2, "transforms": [{"type": "rotation", "degrees": 20}]}


def spec(tmp_path: Path, augment: dict | None = None, seed: int = 0):
    text = {
        "name": "offline",
        "seed": seed,
        "data": {
            "dataset": "mnist",
            "mirror": str(need_mirror("MNIST")),
            "subset": {"train_per_class": 10, "test_per_class": 3},
            "normalize": "standardize",
        },
        "augment": augment or {},
        "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 10}]},
        "train": {"epochs": 1, "batch_size": 50, "device": "cpu"},
    }
    return load_spec_text(yaml.safe_dump(text), base_dir=tmp_path)


def test_prepare_stores_the_originals_then_the_augmented_copies(tmp_path):
    online = prepare(spec(tmp_path), tmp_path / "p")
    p = prepare(spec(tmp_path, ROTATE), tmp_path / "p")
    assert p.root != online.root and "-offline-" in p.root.name
    x, y = p.split("train")
    x0, y0 = online.split("train")
    assert x.shape == (300, 1, 28, 28) and torch.equal(x[:100], x0)
    assert not torch.equal(x[100:200], x0) and not torch.equal(x[100:200], x[200:])
    assert torch.equal(y, y0.repeat(3))
    assert p.meta["counts"]["train"] == {str(c): 30 for c in range(10)}
    assert p.meta["offline"] == {
        "factor": 2,
        "transforms": p.meta["offline"]["transforms"],
        "seed": 0,
        "originals": 100,
    }
    assert p.meta["offline"]["transforms"][0]["degrees"] == 20
    assert p.mean == online.mean and p.std == online.std  # statistics of the originals
    assert torch.equal(p.split("test")[0], online.split("test")[0])  # never augmented
    assert online.meta["offline"] is None


def test_the_folder_depends_on_the_offline_augmentation_only(tmp_path):
    plain = prepared_dir(spec(tmp_path))
    flip = {"transforms": [{"type": "horizontal_flip"}]}
    assert prepared_dir(spec(tmp_path, flip)) == plain  # online: not prepare's business
    assert prepared_dir(spec(tmp_path, {**flip, "mode": "offline", "transforms": []})) == plain
    one = prepared_dir(spec(tmp_path, ROTATE))
    assert prepared_dir(spec(tmp_path, {**ROTATE, "factor": 3})) != one
    assert prepared_dir(spec(tmp_path, {**ROTATE, "transforms": flip["transforms"]})) != one
    assert prepared_dir(spec(tmp_path, ROTATE, seed=1)) != one


def test_train_reads_the_prepared_set_and_writes_nothing_beside_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = spec(tmp_path, ROTATE)
    folder = tmp_path / "data" / "prepared" / "offline"
    stages.prepare(s, out=folder)
    before = {p: p.stat().st_mtime_ns for p in folder.parent.rglob("*")}
    messages: list[str] = []
    trained = stages.train(s, data=folder, log=messages.append)
    assert trained["epochs"] == 1
    assert {p: p.stat().st_mtime_ns for p in folder.parent.rglob("*")} == before
    assert not any("offline augmentation" in m for m in messages)  # nothing made here


def test_train_on_a_folder_without_the_offline_set_says_to_prepare(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data" / "prepared" / "offline"
    stages.prepare(spec(tmp_path), out=folder)  # prepared for online augmentation
    s = spec(tmp_path, ROTATE)
    with pytest.raises(DataError, match="prepared for another data section or offline"):
        stages.train(s, data=folder, log=lambda _: None)
    with pytest.raises(DataError, match="holds no offline-augmented training set"):
        offline_set(s, load_prepared(folder), print)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["offline"]


def test_dvc_declares_the_offline_set_as_prepares_output():
    stages_ = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    prepare_, train = stages_["prepare"]["do"], stages_["train"]["do"]
    (params,) = prepare_["params"]
    assert "augment" in params["runs/${item}/spec.yaml"]  # offline copies are made here
    assert "data/prepared/${item}" in [
        next(iter(o)) if isinstance(o, dict) else o for o in prepare_["outs"]
    ]
    assert "data/prepared/${item}" in [d.split()[0] for d in train["deps"]]
    assert not [o for o in train["outs"] if "data/" in str(o)]  # train writes no data

"""train.checkpoint.keep_top: the k best epochs by the monitored metric, a file each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.spec import load_spec_text
from pipeline.train import checkpoint as ckpt
from pipeline.train.loop import train
from pipeline.train.topk import TopK

MLP = """\
name: top
seed: 2
data:
  dataset: mnist
  subset: {train_per_class: 20, test_per_class: 2}
  validation: {fraction: 0.25}
model:
  layers:
    - {type: flatten}
    - {type: dense, units: 16, activation: relu}
    - {type: dense, units: 10, activation: softmax}
optimizer: {type: sgd, lr: 0.5}
train: {epochs: 5, batch_size: 16, checkpoint: {monitor: val_loss, keep_top: 2}}
"""


def test_the_folder_holds_exactly_the_k_best_epochs(tmp_path, mirror, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    result = train(load_spec_text(MLP), log=lambda _: None)
    folder = tmp_path / "runs" / "top" / "checkpoints"
    best = sorted(result.history, key=lambda r: r["val_loss"])[:2]
    files = sorted(folder.glob("top_*.pt"))
    assert len(files) == 2
    expected = {f"top_epoch{r['epoch']:03d}_val_loss_{r['val_loss']:.4f}.pt" for r in best}
    assert {f.name for f in files} == expected
    for f in files:  # each file holds its epoch's weights
        epoch = int(f.name[len("top_epoch") :][:3])
        assert ckpt.load(f)["epoch"] == epoch
    listed = json.loads((tmp_path / "runs" / "top" / "train.json").read_text())["top_checkpoints"]
    assert [e["epoch"] for e in listed] == [r["epoch"] for r in best]  # best first


def test_a_file_of_an_epoch_that_falls_out_is_deleted_after_the_new_one_is_written(tmp_path):
    top = TopK(tmp_path, 2, "val_accuracy", "max")
    history: list[dict] = []
    order: list[str] = []

    def save(path: Path) -> None:
        assert len(list(tmp_path.glob("top_*"))) <= 2  # the one pushed out is still there
        path.write_text("x")
        order.append(path.name)

    for epoch, value in enumerate([0.5, 0.7, 0.6, 0.9, 0.1], 1):
        history.append({"epoch": epoch, "val_accuracy": value})
        top.update(history, save)
    assert order == [top.name(1, 0.5), top.name(2, 0.7), top.name(3, 0.6), top.name(4, 0.9)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [top.name(2, 0.7), top.name(4, 0.9)]
    assert [e["epoch"] for e in top.listing(history)] == [4, 2]


@pytest.mark.parametrize("k", [0, 101])
def test_keep_top_out_of_range_is_a_located_error(tmp_path, k):
    from pipeline.spec import SpecError

    with pytest.raises(SpecError) as err:
        load_spec_text(MLP, [f"train.checkpoint.keep_top={k}"])
    assert "train.checkpoint.keep_top" in str(err.value)

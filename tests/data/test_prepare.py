"""prepare: real class counts and splits, selection, subsets, statistics, atomic and idempotent
writes, and the folder name."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data import (
    DataError,
    load_prepared,
    load_prepared_for,
    prepare,
    prepared_dir,
    report,
)
from pipeline.spec import load_spec
from tests.data.conftest import (
    MNIST_TEST_COUNTS,
    MNIST_TRAIN_COUNTS,
    need_mirror,
    raw_idx,
    spec_from,
)

REPO = Path(__file__).resolve().parents[2]
FASHION = [
    "t_shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
]


def counts(prepared, split: str) -> list[int]:
    return list(prepared.meta["counts"][split].values())


# ---- real datasets ---------------------------------------------------------------------------


def test_mnist_counts_and_the_seeds_validation_split(mnist_prepared):
    p = mnist_prepared
    assert {k: len(y) for k, (_, y) in p.splits.items()} == {
        "train": 55000,
        "val": 5000,
        "test": 10000,
    }
    total = np.add(counts(p, "train"), counts(p, "val")).tolist()
    assert total == MNIST_TRAIN_COUNTS and counts(p, "test") == MNIST_TEST_COUNTS
    labels = raw_idx("MNIST", "train-labels-idx1-ubyte")
    images = raw_idx("MNIST", "train-images-idx3-ubyte")
    assert np.array_equal(p.split("val")[1].numpy(), labels[:5000])  # X_train_full[:5000]
    assert np.array_equal(p.split("train")[1].numpy(), labels[5000:])
    assert np.array_equal(p.split("train")[0][:3, 0].numpy(), images[5000:5003])
    x, y = p.split("train")
    assert x.dtype == torch.uint8 and y.dtype == torch.int64 and p.image_shape == (1, 28, 28)
    assert p.meta["checksums"]["MNIST/raw/train-images-idx3-ubyte.gz"] == (
        "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    )
    assert {f.name for f in p.root.iterdir()} == {
        "meta.json",
        "pipeline-prepared.txt",  # the marker: this folder is prepare's own
        *(f"{s}_{a}.npy" for s in ("train", "val", "test") for a in "xy"),
    }


def test_fashion_mnist_counts(make_spec, tmp_path):
    mirror = need_mirror("FashionMNIST")
    p = prepare(make_spec({"dataset": "fashion_mnist", "mirror": str(mirror)}), tmp_path)
    assert p.classes == FASHION
    assert counts(p, "train") == [6000] * 10 and counts(p, "test") == [1000] * 10
    assert "val" not in p.splits


def test_task_a_drops_sandal_and_shirt(make_spec, tmp_path):
    mirror = need_mirror("FashionMNIST")
    spec = make_spec(
        {
            "dataset": "fashion_mnist",
            "mirror": str(mirror),
            "classes": {"drop": ["Sandal", 6]},
        }
    )
    p = prepare(spec, tmp_path)
    assert p.classes == [c for c in FASHION if c not in ("sandal", "shirt")]
    assert len(p.split("train")[1]) == 48000 and len(p.split("test")[1]) == 8000
    raw = raw_idx("FashionMNIST", "train-labels-idx1-ubyte").astype(np.int64)
    kept = raw[(raw != 5) & (raw != 6)]
    expected = kept - 2 * (kept > 6)  # the seeds' y_A[y_A > 6] -= 2
    assert np.array_equal(p.split("train")[1].numpy(), expected)


def test_task_b_keeps_sandal_and_shirt_as_binary(make_spec, tmp_path):
    mirror = need_mirror("FashionMNIST")
    spec = make_spec(
        {
            "dataset": "fashion_mnist",
            "mirror": str(mirror),
            "classes": {"keep": ["sandal", "shirt"]},
        }
    )
    p = prepare(spec, tmp_path)
    raw = raw_idx("FashionMNIST", "train-labels-idx1-ubyte")
    assert p.classes == ["sandal", "shirt"]
    assert np.array_equal(p.split("train")[1].numpy(), raw[(raw == 5) | (raw == 6)] == 6)
    assert counts(p, "train") == [6000, 6000] and counts(p, "test") == [1000, 1000]


def test_the_example_specs_prepare(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_DATA_MIRROR", str(need_mirror("FashionMNIST")))
    b = prepare(load_spec(REPO / "specs/fashion_task_b_on_a.yaml"), tmp_path)
    # validation.fraction 0.2 is a fraction of the subset of 125 per class: the seeds' 200
    # training images remain
    assert b.meta["counts"]["train"] == {"sandal": 100, "shirt": 100}
    assert b.meta["counts"]["val"] == {"sandal": 25, "shirt": 25}
    leaky = prepare(load_spec(REPO / "specs/leaky_relu_mlp.yaml"), tmp_path)
    assert leaky.image_shape == (1, 2, 4)  # a 2x4 thumbnail
    assert leaky.split("train")[0].shape[1:] == (1, 2, 4)


# ---- subsets, seeds, statistics --------------------------------------------------------------


def test_per_class_subset_is_seeded(make_spec, tmp_path):
    mirror = str(need_mirror("MNIST"))
    data = {
        "dataset": "mnist",
        "mirror": mirror,
        "subset": {"train_per_class": 30, "test_per_class": 7},
        "validation": {"fraction": 0.5},
    }
    a = prepare(make_spec(data, seed=1), tmp_path / "a")
    again = prepare(make_spec(data, seed=1), tmp_path / "b")
    other = prepare(make_spec(data, seed=2), tmp_path / "c")
    assert counts(a, "train") == [15] * 10 and counts(a, "test") == [7] * 10  # half of 30
    for split in ("train", "val", "test"):
        assert torch.equal(a.split(split)[0], again.split(split)[0])
        assert not torch.equal(a.split(split)[0], other.split(split)[0])
    pinned = prepare(make_spec({**data, "seed": 1}, seed=2), tmp_path / "d")
    assert torch.equal(a.split("val")[0], pinned.split("val")[0])  # data.seed draws the split
    assert torch.equal(torch.bincount(a.split("val")[1]), torch.tensor([15] * 10))


def test_standardize_uses_the_training_split_only(make_spec, tmp_path):
    data = {
        "dataset": "mnist",
        "mirror": str(need_mirror("MNIST")),
        "normalize": "standardize",
        "subset": {"train_per_class": 200},
        "validation": {"first": 5000},  # held out of the whole split: 5000 against 2000
    }
    p = prepare(make_spec(data), tmp_path)
    train = p.split("train")[0].numpy().astype(np.float64) / 255
    assert p.mean == pytest.approx([train.mean()], abs=1e-9)
    assert p.std == pytest.approx([train.std()], abs=1e-9)
    both = np.concatenate([train, p.split("val")[0].numpy() / 255])
    assert abs(both.mean() - p.mean[0]) > 1e-4  # the (much larger) validation split differs
    assert p.meta["normalization"]["computed_on"] == "train"


def test_rgb_and_explicit_normalization(make_spec, tmp_path):
    data = {
        "dataset": "mnist",
        "mirror": str(need_mirror("MNIST")),
        "color_mode": "rgb",
        "image_size": 32,
        "subset": {"train_per_class": 5, "test_per_class": 5},
        "normalize": {"mean": [0.5], "std": [0.25]},
    }
    p = prepare(make_spec(data), tmp_path)
    x = p.split("test")[0]
    assert x.shape == (50, 3, 32, 32) and torch.equal(x[:, 0], x[:, 2])
    assert p.mean == [0.5] * 3 and p.std == [0.25] * 3


def test_unknown_class_suggests_the_closest_before_reading(make_spec, tmp_path):
    spec = make_spec(
        {
            "dataset": "fashion_mnist",
            "mirror": str(tmp_path / "nothing-here"),
            "classes": {"keep": ["sandl", "shirt"]},
        }
    )
    with pytest.raises(DataError) as err:
        prepare(spec, tmp_path / "out")
    assert "unknown class 'sandl'; did you mean 'sandal'?" in str(err.value)
    assert "ankle_boot" in str(err.value)  # the valid names are listed
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---- the folder: name, atomicity, idempotence --------------------------------------------------


def test_folder_depends_only_on_the_data_section(make_spec, tmp_path):
    base = {"dataset": "mnist", "validation": {"first": 5000}}
    one = prepared_dir(make_spec(base, epochs=1))
    assert one.name.startswith("mnist-") and one.parent == Path("data/prepared")
    assert prepared_dir(make_spec(base, epochs=7)) == one
    assert prepared_dir(make_spec({**base, "mirror": "/elsewhere", "download": False})) == one
    assert prepared_dir(make_spec(base, seed=3)) == one  # nothing is drawn with the seed
    assert prepared_dir(make_spec({**base, "validation": {"first": 4000}})) != one
    frac = {"dataset": "mnist", "validation": {"fraction": 0.1}}
    assert prepared_dir(make_spec(frac, seed=1)) != prepared_dir(make_spec(frac, seed=2))
    # data.seed pins the split: the training seed then varies without preparing again
    pinned = {**frac, "seed": 7}
    assert prepared_dir(make_spec(pinned, seed=1)) == prepared_dir(make_spec(pinned, seed=2))
    assert prepared_dir(make_spec(pinned, seed=1)) == prepared_dir(make_spec(frac, seed=7))


def test_prepare_into_an_exact_folder_and_load_it_back_checked(make_spec, tmp_path):
    data = {
        "dataset": "mnist",
        "mirror": str(need_mirror("MNIST")),
        "subset": {"train_per_class": 20, "test_per_class": 5},
    }
    spec = make_spec(data)
    folder = tmp_path / "dvc-out" / "tiny"
    prepared = prepare(spec, target=folder)
    assert prepared.root == folder and (folder / "meta.json").is_file()
    assert not (tmp_path / "dvc-out" / prepared_dir(spec).name).exists()
    mtime = (folder / "train_x.npy").stat().st_mtime_ns
    assert prepare(spec, target=folder).root == folder  # complete: a no-op
    assert (folder / "train_x.npy").stat().st_mtime_ns == mtime
    assert counts(load_prepared_for(spec, folder), "train") == [20] * 10
    forced = prepare(spec, target=folder, force=True)  # a fresh copy replaces a complete one
    assert forced.root == folder and (folder / "train_x.npy").stat().st_mtime_ns != mtime
    assert sorted(p.name for p in folder.parent.iterdir()) == ["tiny"]  # no .old-/.tmp- left
    other = make_spec({**data, "subset": {"train_per_class": 30}})
    with pytest.raises(DataError, match="prepared for another data section"):
        load_prepared_for(other, folder)


def test_interrupted_prepare_leaves_nothing(make_spec, tmp_path):
    data = {
        "dataset": "mnist",
        "mirror": str(need_mirror("MNIST")),
        "subset": {"train_per_class": 10, "test_per_class": 10},
    }
    spec = make_spec(data)

    def interrupt(message: str) -> None:
        if message == "wrote train_y.npy":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(spec, tmp_path, progress=interrupt)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temp folder
    p = prepare(spec, tmp_path)
    assert len(p.split("train")[1]) == 100 and (p.root / "meta.json").is_file()


def test_killed_prepare_leaves_no_target_and_is_cleaned_up(tmp_path):
    data = {
        "dataset": "mnist",
        "mirror": str(need_mirror("MNIST")),
        "subset": {"train_per_class": 10, "test_per_class": 10},
    }
    out = tmp_path / "out"
    script = (
        "import sys, time\nfrom pathlib import Path\n"
        "from tests.data.conftest import spec_from\nfrom pipeline.data import prepare\n"
        "def hook(msg):\n"
        "    if msg.startswith('wrote'):\n"
        "        print('WRITING', flush=True)\n        time.sleep(120)\n"
        f"prepare(spec_from({data!r}, Path({str(tmp_path)!r})), {str(out)!r}, progress=hook)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "WRITING"
    finally:
        proc.kill()
        proc.wait()
    spec = spec_from(data, tmp_path)
    target = prepared_dir(spec, out)
    assert not target.exists()
    assert [p.name.startswith(f".tmp-{target.name}-") for p in out.iterdir()] == [True]
    prepare(spec, out)
    assert [p.name for p in out.iterdir()] == [target.name]  # the dead one's temp is gone


def test_second_prepare_is_a_fast_no_op(mnist_prepared):
    root = mnist_prepared.root
    before = {f.name: f.stat().st_mtime_ns for f in root.iterdir()}
    data = {
        "dataset": "mnist",
        "mirror": "/not/needed/when/prepared",
        "validation": {"first": 5000},
    }
    spec = spec_from(data, root.parent.parent)
    start = time.perf_counter()
    again = prepare(spec, root.parent)
    assert time.perf_counter() - start < 1.0
    assert again.root == root
    assert {f.name: f.stat().st_mtime_ns for f in root.iterdir()} == before
    assert torch.equal(again.split("val")[1], mnist_prepared.split("val")[1])


def test_incomplete_folder_is_prepared_again(make_spec, tmp_path):
    data = {
        "dataset": "mnist",
        "mirror": str(need_mirror("MNIST")),
        "subset": {"train_per_class": 3, "test_per_class": 3},
    }
    p = prepare(make_spec(data), tmp_path)
    (p.root / "test_x.npy").write_bytes(b"truncated")
    again = prepare(make_spec(data), tmp_path)
    assert torch.equal(again.split("test")[0], p.split("test")[0])
    assert [f.name for f in tmp_path.iterdir()] == [p.root.name]


def test_changed_image_folder_is_prepared_again(make_spec, tmp_path):
    for name in ("a", "b"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        Image.new("L", (8, 8), 40).save(tmp_path / "imgs" / name / "0.png")
    spec = make_spec({"dataset": "image_folder", "path": "imgs", "color_mode": "grayscale"})
    assert prepare(spec, tmp_path / "out").meta["counts"]["train"] == {"a": 1, "b": 1}
    Image.new("L", (8, 8), 90).save(tmp_path / "imgs" / "b" / "1.png")
    assert prepare(spec, tmp_path / "out").meta["counts"]["train"] == {"a": 1, "b": 2}


def test_an_image_folder_project_moved_elsewhere_keeps_its_prepared_data(
    make_spec, tmp_path, monkeypatch
):
    # a DVC clone at another path pulls data/prepared/<spec>: the key must not hold the
    # absolute path of the image folder, or load_prepared_for would refuse the pulled folder
    first, second = tmp_path / "first", tmp_path / "second"
    for name in ("a", "b"):
        (first / "imgs" / name).mkdir(parents=True)
        Image.new("L", (8, 8), 40).save(first / "imgs" / name / "0.png")
    data = {"dataset": "image_folder", "path": "imgs", "color_mode": "grayscale"}
    monkeypatch.chdir(first)
    prepare(spec_from(data, first), target="data/prepared/x")
    shutil.copytree(first, second)
    monkeypatch.chdir(second)
    moved = load_prepared_for(spec_from(data, second), "data/prepared/x")
    assert moved.meta["counts"]["train"] == {"a": 1, "b": 1}
    # a spec naming another folder still has another key
    (second / "other" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="prepared for another data section"):
        load_prepared_for(spec_from({**data, "path": "other"}, second), "data/prepared/x")


# ---- reading back ------------------------------------------------------------------------------


def test_load_prepared_memmaps_and_reports(mnist_prepared):
    mapped = load_prepared(mnist_prepared.root, mmap=True)
    x = mapped.split("train")[0]
    assert isinstance(x, np.memmap) and x.shape == (55000, 1, 28, 28)
    assert np.array_equal(x[:10], mnist_prepared.split("train")[0][:10].numpy())
    text = report(mapped)
    assert "55000" in text.splitlines()[-1] and "5923" not in text  # split, not raw counts
    summary = json.loads(report(mapped, as_json=True))
    assert summary["counts"]["val"]["0"] + summary["counts"]["train"]["0"] == 5923
    with pytest.raises(DataError, match=re.escape("no 'nope' split")):
        mapped.split("nope")


def test_load_prepared_of_an_unprepared_spec_says_what_to_do(make_spec, tmp_path):
    with pytest.raises(DataError, match=re.escape("pipeline prepare")):
        load_prepared(make_spec({"dataset": "cifar10"}), tmp_path)

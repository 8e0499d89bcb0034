"""The run-time side of the validate-time limits: the loader refuses an epoch without a batch,
schedule-preview is bounded whatever the step count, layer selection knows the same names as
the layer-selectors check, and the torch-free memory and size figures match the real thing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pipeline.data import BatchLoader, prepare
from pipeline.errors import ConfigurationError
from pipeline.model import build_model, summarize
from pipeline.spec import load_spec, load_spec_text
from pipeline.spec.base import OPTIMIZERS, SCHEDULES
from pipeline.spec.composite import ARCHS
from pipeline.spec.data import DATASETS
from pipeline.spec.footprint import BACKBONES, footprint
from pipeline.spec.selectors import selectable
from pipeline.spec.sizes import split_sizes
from pipeline.train.explore import schedule_preview
from pipeline.train.params import layer_table, select
from pipeline.train.schedules import RATES, planned
from tests.conftest import MIRROR

ROOT = Path(__file__).resolve().parents[2]

# ---- an epoch without a batch --------------------------------------------------------------


def indexed(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n)


def test_drop_last_with_a_batch_larger_than_the_data_is_refused():
    with pytest.raises(ConfigurationError, match=r"the train split has 10 samples: batch_size 64"):
        BatchLoader(*indexed(10), 64, drop_last=True, name="the train split")
    assert len(BatchLoader(*indexed(10), 64)) == 1  # without drop_last: one partial batch


def test_an_empty_split_is_refused():
    with pytest.raises(ConfigurationError, match="has 0 samples: it is empty"):
        BatchLoader(*indexed(0), 8)


def test_training_refuses_an_epoch_without_a_batch_where_validate_cannot_tell(
    tmp_path, monkeypatch
):
    """An image folder's size is known only after prepare: the loader is the guard."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    for label in ("a", "b"):
        (tmp_path / "train" / label).mkdir(parents=True)
        for i in range(3):
            pixels = np.full((8, 8), 40 * i + (100 if label == "b" else 0), np.uint8)
            Image.fromarray(pixels, "L").save(tmp_path / "train" / label / f"{i}.png")
    spec = load_spec_text(
        "name: tiny\n"
        "data: {dataset: image_folder, path: train, image_size: 8, color_mode: grayscale}\n"
        "model: {layers: [{type: flatten}, {type: dense, units: 2}]}\n"
        "train: {epochs: 1, batch_size: 64, drop_last: true}\n",
        base_dir=tmp_path,
    )
    from pipeline.train.loop import train

    with pytest.raises(ConfigurationError) as err:
        train(spec, log=lambda _: None)
    assert "the train split has 6 samples: batch_size 64 with drop_last" in str(err.value)
    assert not (tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt").exists()


# ---- schedule-preview ----------------------------------------------------------------------


def test_schedule_preview_is_bounded_whatever_the_step_count(tmp_path):
    spec = load_spec_text(
        "name: long\ndata: {dataset: mnist}\n"
        "model: {layers: [{type: flatten}, {type: dense, units: 10}]}\n"
        "optimizer: {type: sgd, lr: 0.1}\n"
        "schedule: {type: exponential, decay_steps: 1e8, interval: step}\n"
        "train: {epochs: 10000}\n",
        check=False,  # run-length would refuse 10^10 steps; the preview must still be bounded
    )
    began = time.perf_counter()
    rows = schedule_preview(spec, tmp_path, steps_per_epoch=10**6)
    assert time.perf_counter() - began < 30
    assert 2 <= len(rows) <= 2000
    assert rows[0]["step"] == 0 and rows[-1]["step"] == 10**10 - 1
    assert rows[-1]["epoch"] == 9999
    for r in rows:
        assert r["lr"] == pytest.approx(0.1 * 0.1 ** (r["step"] / 1e8))
    assert (tmp_path / "schedule.csv").read_text().count("\n") == len(rows) + 1


SCHEDULE_EXAMPLES = {
    "constant": {},
    "step": {"step_size": 4, "gamma": 0.5},
    "multi_step": {"milestones": [3, 3, 9], "gamma": 0.5},
    "piecewise_constant": {"boundaries": [4, 10], "values": [0.1, 0.05, 0.01]},
    "exponential": {"decay_steps": 5, "staircase": True},
    "power": {"decay_steps": 3, "power": 2.0},
    "reduce_on_plateau": {},
    "one_cycle": {"max_lr": 0.5, "pct_start": 0.25},
    "cyclic": {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 3, "mode": "triangular2"},
    "cosine": {"warmup": 4, "min_lr": 0.001},
}


def test_every_schedule_kind_has_an_example():
    assert set(SCHEDULE_EXAMPLES) == set(SCHEDULES.kinds) and set(RATES) == set(
        SCHEDULES.kinds.values()
    )


CASES = [
    (name, interval)
    for name in sorted(SCHEDULE_EXAMPLES)
    for interval in ("step", "epoch")
    if interval in str(SCHEDULES.kinds[name].model_fields["interval"].annotation)
]


@pytest.mark.parametrize(("name", "interval"), CASES)
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_the_closed_form_is_what_the_torch_scheduler_does(name, interval, opt):
    kind = SCHEDULES.kinds[name]
    sch = kind.model_validate({"type": name, "interval": interval, **SCHEDULE_EXAMPLES[name]})
    o = OPTIMIZERS.kinds[opt](lr=0.1, **({"momentum": 0.9} if opt == "sgd" else {}))
    stepped = planned(sch, o, steps_per_epoch=4, epochs=6)
    sampled = planned(sch, o, steps_per_epoch=4, epochs=6, points=7)
    assert len(sampled) == 7 and sampled[-1]["step"] == 23
    for row in sampled:
        exact = stepped[row["step"]]
        assert row["epoch"] == exact["epoch"]
        assert row["lr"] == pytest.approx(exact["lr"], rel=1e-9), row
        assert row["momentum"] == pytest.approx(exact["momentum"], rel=1e-9), row


# ---- layer selection -----------------------------------------------------------------------

SOURCE = """\
name: a
data: {dataset: cifar10}
model:
  layers:
    - {type: conv2d, filters: 4, kernel_size: 3, padding: same, name: h1}
    - type: residual
      name: res
      layers:
        - {type: conv2d, filters: 4, kernel_size: 3, padding: same, name: h2}
        - type: residual
          layers: [{type: conv2d, filters: 4, kernel_size: 3, padding: same}]
    - {type: flatten}
    - {type: dense, units: 10, name: h3}
"""

REUSING = """\
name: b
data: {dataset: cifar10}
model:
  layers:
    - {type: reuse, spec: a.yaml, upto: res, name: base}
    - {type: conv2d, filters: 3, kernel_size: 1, name: conv1, batch_norm: after, activation: prelu}
    - {type: backbone, arch: resnet18, include_top: true, name: net}
    - type: residual
      layers: [{type: dense, units: 1000}, {type: batch_norm}]
    - {type: dense, units: 10, trainable: false}
"""


@pytest.fixture
def reusing(tmp_path):
    (tmp_path / "a.yaml").write_text(SOURCE)
    (tmp_path / "b.yaml").write_text(REUSING)
    spec = load_spec(tmp_path / "b.yaml")
    return spec, build_model(spec, device="meta", load_weights=False)


def test_the_check_knows_exactly_the_names_training_selects_by(reusing):
    spec, model = reusing
    table = layer_table(model)
    known = selectable(spec.model.layers)
    assert [s.name for s in known] == list(table)
    for s in known:
        assert model.get_submodule(s.path) is table[s.name], s
    assert {"base.h2", "base.conv2d_3", "net.layer4", "net.fc", "residual_1.dense_1"} <= set(table)
    assert table["conv1"] is model.conv1  # the spec's own layer, not the backbone's conv1
    assert table["net.conv1"] is model.net.conv1


def test_every_name_the_expanded_summary_lists_can_be_selected(reusing):
    spec, model = reusing
    rows = [r.name for r in summarize(model, spec, expand=True).rows]
    assert "base.res" in rows and "residual_1.shortcut" in rows
    assert set(rows) <= set(layer_table(model))


def test_select_finds_reused_layers_and_refuses_what_names_nothing(reusing):
    _, model = reusing
    assert select(model, ["base.h1"]) == [model.base.h1]
    assert select(model, ["residual_1.dense_1"]) == [model.residual_1.branch.dense_1]
    with pytest.raises(ConfigurationError, match=r"no layer matches 'base\.h9'"):
        select(model, ["base.h9"])
    with pytest.raises(ConfigurationError, match="no layer is named 'nope'"):
        select(model, [_range("nope")])


def _range(name: str):
    from pipeline.spec.train import LayerRange

    return LayerRange.model_validate({"from": name})


# ---- memory and sizes, torch-free, against the real thing ----------------------------------


def _example_specs():
    return [p for p in sorted((ROOT / "specs").glob("*.yaml"))]


@pytest.mark.parametrize("path", _example_specs(), ids=lambda p: p.name)
def test_parameter_counts_are_the_built_model_s(path):
    spec = load_spec(path)
    fp = footprint(spec.model.layers, spec.model.resolved_input_shape())
    summary = summarize(spec)
    assert fp.stored == summary.total_params
    assert fp.frozen + fp.buffers == summary.non_trainable_params


def test_parameter_counts_of_composites_are_the_built_model_s(reusing):
    spec, model = reusing
    fp = footprint(spec.model.layers, spec.model.resolved_input_shape())
    summary = summarize(model, spec)
    assert fp.stored == summary.total_params
    assert fp.frozen + fp.buffers == summary.non_trainable_params


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_the_backbone_table_is_torchvision_s(arch):
    size = BACKBONES[arch]
    for top in (False, True):
        spec = load_spec_text(
            f"name: t\ndata: {{dataset: cifar10, image_size: 64}}\nmodel: {{layers: "
            f"[{{type: backbone, arch: {arch}, include_top: {str(top).lower()}}}, "
            "{type: flatten}, {type: dense, units: 10}]}\n",
            check=False,
        )
        net = build_model(spec, device="meta", load_weights=False).backbone_1
        params = sum(p.numel() for p in net.parameters())
        stats = sum(
            2 * m.running_mean.numel()
            for m in net.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        )
        assert (params, stats) == (size.top_params if top else size.params, size.buffers)
        if not top:
            assert _outputs(net, 64) / (64 * 64) == pytest.approx(size.activations_per_pixel)


def _outputs(net: nn.Module, side: int) -> int:
    """The sum of the leaf modules' output sizes for one side x side image."""
    sizes: list[int] = []
    for m in net.modules():
        if not list(m.children()):
            m.register_forward_hook(lambda m, i, o: sizes.append(o.numel()))
    net(torch.empty(1, 3, side, side, device="meta"))
    return sum(sizes)


def _labels(folder: str, name: str) -> np.ndarray:
    import gzip

    with gzip.open(MIRROR / folder / "raw" / f"{name}.gz") as f:
        return np.frombuffer(f.read(), np.uint8, offset=8)


@pytest.mark.parametrize(
    ("dataset", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_the_per_class_counts_are_the_mirror_s(mirror, dataset, folder):
    table = DATASETS[dataset]
    assert tuple(np.bincount(_labels(folder, "train-labels-idx1-ubyte"))) == table.train_counts
    assert tuple(np.bincount(_labels(folder, "t10k-labels-idx1-ubyte"))) == table.test_counts


def test_split_sizes_are_what_prepare_makes(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    spec = load_spec_text(
        "name: t\ndata: {dataset: mnist, classes: {keep: [7, 1]}, validation: {fraction: 0.15},"
        " subset: {train_per_class: 5000, test_per_class: 50}}\n"
        "model: {layers: [{type: flatten}, {type: dense, units: 2}]}\n"
    )
    prepared = prepare(spec, tmp_path / "out")
    sizes = split_sizes(spec.data)
    got = {name: len(prepared.split(name)[1]) for name in ("train", "val", "test")}
    assert got == {"train": sizes.train, "val": sizes.val, "test": sizes.test}
    # the subset (5000 of 6265 sevens, 5000 of 6742 ones) first, then 15% of it held out
    assert sizes.train == 2 * (5000 - round(5000 * 0.15))
    assert sizes.val == 2 * round(5000 * 0.15)

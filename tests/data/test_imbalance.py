"""Merging classes, balanced class weights and the balanced sampler, on a real skewed set:
Fashion-MNIST's three kinds of shoe merged into one class against bags (18,000 vs 6,000)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from pipeline.data import BatchLoader, Prepared, prepare
from pipeline.data.class_weights import resolve_class_weights
from pipeline.data.prepare import prepared_dir
from pipeline.errors import ConfigurationError
from pipeline.spec import load_spec_text
from pipeline.spec.spec import Spec
from pipeline.train.metrics import spec_loss
from tests.data.conftest import need_mirror, raw_idx


def merged(root: Path, groups: str, subset: str = "{test_per_class: 50}", train: str = "") -> Spec:
    """A Fashion-MNIST spec merging classes (written as YAML: the merge's order is kept)."""
    text = f"""\
name: t
data:
  dataset: fashion_mnist
  mirror: {need_mirror("FashionMNIST")}
  classes: {{merge: {groups}}}
  subset: {subset}
model: {{layers: [{{type: flatten}}, {{type: dense, units: 2}}]}}
train: {{{train}}}
"""
    return load_spec_text(text, base_dir=root, check=False)


@pytest.fixture(scope="module")
def skewed(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """Footwear (3 source classes) against bag (1), the test split cut to 50 per class."""
    root = tmp_path_factory.mktemp("skewed")
    return prepare(merged(root, "{footwear: [sandal, sneaker, ankle_boot], bag: [bag]}"), root)


def test_the_merge_order_sets_the_labels_and_the_prepared_folder(tmp_path):
    a = merged(tmp_path, "{footwear: [sandal], bag: [bag]}")
    b = merged(tmp_path, "{bag: [bag], footwear: [sandal]}")
    assert list(a.data.classes.merge) == ["footwear", "bag"]
    assert prepared_dir(a) != prepared_dir(b)


def test_merge_gives_the_merged_classes_and_their_label_counts(skewed):
    source = raw_idx("FashionMNIST", "train-labels-idx1-ubyte")
    x, y = skewed.split("train")
    assert skewed.classes == ["footwear", "bag"]
    assert skewed.meta["class_map"] == [[5, 7, 9], [8]]
    assert torch.bincount(y).tolist() == [int(np.isin(source, [5, 7, 9]).sum()), 6000]
    # the images keep their order and each takes its group's label
    keep = np.isin(source, [5, 7, 8, 9])
    assert torch.equal(y, torch.from_numpy((source[keep] == 8).astype(np.int64)))
    assert skewed.meta["counts"]["test"] == {"footwear": 50, "bag": 50}
    assert len(x) == len(y) == 24000


def test_balanced_weights_are_sklearns_from_the_training_split(skewed):
    _, y = skewed.split("train")
    stored = skewed.meta["class_weights"]
    assert stored["computed_on"] == "train"
    assert stored["balanced"] == pytest.approx([24000 / (2 * 18000), 24000 / (2 * 6000)])
    expected = compute_class_weight("balanced", classes=np.array([0, 1]), y=y.numpy())
    assert resolve_class_weights("balanced", skewed.meta) == pytest.approx(expected.tolist())


def test_the_stored_balanced_weights_are_what_the_loss_uses(skewed, tmp_path):
    groups = "{footwear: [sandal, sneaker, ankle_boot], bag: [bag]}"
    spec = merged(tmp_path, groups, train="class_weights: balanced")
    logits, y = torch.tensor([[2.0, 0.0], [0.0, 1.0], [2.0, -1.0]]), torch.tensor([0, 0, 1])
    expected = F.cross_entropy(logits, y, weight=torch.tensor([2 / 3, 2.0]))
    assert spec_loss(spec, skewed)(logits, y).item() == pytest.approx(expected.item())
    assert spec_loss(spec, skewed)(logits, y) > F.cross_entropy(
        logits, y
    )  # the missed bag counts more


def test_explicit_weights_by_name_index_or_list(skewed):
    meta = skewed.meta
    assert resolve_class_weights({"bag": 3.0}, meta) == [1.0, 3.0]  # unnamed classes weigh 1
    assert resolve_class_weights({"FootWear": 2.0, 1: 0.5}, meta) == [2.0, 0.5]
    assert resolve_class_weights([0.2, 0.8], meta) == [0.2, 0.8]
    with pytest.raises(ConfigurationError, match=r"class_weights.bags: .*did you mean 'bag'"):
        resolve_class_weights({"bags": 2.0}, meta)
    with pytest.raises(ConfigurationError, match="3 weights for 2 classes"):
        resolve_class_weights([1.0, 2.0, 3.0], meta)


def class_counts(loader: BatchLoader) -> list[int]:
    return torch.bincount(torch.cat([yb for _, yb in loader]), minlength=2).tolist()


def test_balanced_sampler_draws_classes_equally_and_is_seeded(skewed):
    x, y = skewed.split("train")
    x, y = x[:6000], y[:6000]  # the merged set's first 6000: about 3 shoes to 1 bag

    def loader(balanced: bool) -> BatchLoader:
        return BatchLoader(x, y, 500, shuffle=True, seed=3, balanced=balanced)

    skew = torch.bincount(y).tolist()
    assert class_counts(loader(False)) == skew and skew[0] > 2.5 * skew[1]
    balanced = loader(True)
    counts = class_counts(balanced)
    assert sum(counts) == 6000 and len(balanced) == len(loader(False))  # the same epoch length
    assert abs(counts[0] - counts[1]) < 0.05 * 6000  # a binomial(6000, 1/2): sd 39
    labels = [torch.cat([yb for _, yb in balanced]) for _ in range(2)]  # epochs 1 and 2
    assert not torch.equal(labels[0], labels[1])  # a new draw every epoch
    again = loader(True)
    again.set_epoch(2)
    assert torch.equal(torch.cat([yb for _, yb in again]), labels[1])  # resume replays it


def test_balanced_sampler_over_ranks_is_the_one_process_draw(skewed):
    """Two ranks of a distributed run take every other sample of the same global draw."""
    x, y = skewed.split("train")
    x, y = x[:3000].numpy(), y[:3000]
    one = BatchLoader(x, y, 100, shuffle=True, seed=1, balanced=True)
    ranks = [
        BatchLoader(x, y, 100, shuffle=True, seed=1, balanced=True, shard=(r, 2)) for r in (0, 1)
    ]
    for whole, *shares in zip(one, *ranks, strict=True):
        merged = torch.empty_like(whole[1])
        merged[0::2], merged[1::2] = shares[0][1], shares[1][1]
        assert torch.equal(merged, whole[1])


def test_balanced_sampler_refuses_a_streamed_split(skewed, tmp_path: Path):
    x, y = skewed.split("train")
    path = tmp_path / "x.npy"
    np.save(path, x[:200].numpy())
    mapped = np.load(path, mmap_mode="r")
    with pytest.raises(ConfigurationError, match=r"balanced .* larger than half the free RAM"):
        BatchLoader(mapped, y[:200], 50, shuffle=True, stream=True, balanced=True)

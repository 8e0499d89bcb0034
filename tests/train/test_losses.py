"""Class weights and the focal loss on fixed logits, and a real run on a merged, skewed task
with all of them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from pipeline.errors import ConfigurationError
from pipeline.spec import load_spec_text
from pipeline.train.loop import train
from pipeline.train.metrics import loss_fn

LOGITS = torch.tensor([[4.0, 0.0, -1.0], [0.5, 0.2, 0.1], [-2.0, 3.0, 0.0], [0.0, 0.0, 2.5]])
LABELS = torch.tensor([0, 2, 1, 0])


def per_sample_ce() -> torch.Tensor:
    return F.cross_entropy(LOGITS, LABELS, reduction="none")


def test_class_weights_make_the_loss_the_weighted_mean_of_the_samples():
    plain = loss_fn("cross_entropy", 3, 0.0)(LOGITS, LABELS)
    weights = [1.0, 3.0, 0.5]
    weighted = loss_fn("cross_entropy", 3, 0.0, weights)(LOGITS, LABELS)
    w = torch.tensor(weights)[LABELS]
    assert plain == pytest.approx(per_sample_ce().mean().item())
    assert weighted == pytest.approx(((per_sample_ce() * w).sum() / w.sum()).item())
    # class 0's samples are the easy one and the worst one: weighing class 0 up moves the loss
    # toward their mean, weighing it down toward the others'
    c0 = per_sample_ce()[LABELS == 0].mean().item()
    up = loss_fn("cross_entropy", 3, 0.0, [100.0, 1.0, 1.0])(LOGITS, LABELS).item()
    assert abs(up - c0) < abs(plain.item() - c0)
    uniform = loss_fn("cross_entropy", 3, 0.0, [2.0, 2.0, 2.0])(LOGITS, LABELS)
    assert uniform == pytest.approx(plain.item())  # only the balance between classes counts


@pytest.mark.parametrize("weights", [None, [1.0, 3.0, 0.5]])
def test_focal_at_gamma_0_is_cross_entropy(weights):
    focal = loss_fn("focal", 3, 0.0, weights, gamma=0.0)(LOGITS, LABELS)
    ce = loss_fn("cross_entropy", 3, 0.0, weights)(LOGITS, LABELS)
    assert focal.item() == pytest.approx(ce.item(), rel=1e-6)


def test_focal_down_weights_easy_examples_by_lins_factor():
    gamma = 2.0
    focal = [
        loss_fn("focal", 3, 0.0, gamma=gamma)(LOGITS[i : i + 1], LABELS[i : i + 1])
        for i in range(4)
    ]
    ce = per_sample_ce()
    p_true = F.softmax(LOGITS, 1)[torch.arange(4), LABELS]
    for i in range(4):
        assert focal[i].item() == pytest.approx(((1 - p_true[i]) ** gamma * ce[i]).item(), rel=1e-5)
    ratio = [focal[i].item() / ce[i].item() for i in range(4)]
    # sample 0 is right with p=0.98: its loss shrinks ~2000x; sample 3 is wrong: barely
    assert ratio[0] < 1e-3 and ratio[3] > 0.8
    assert loss_fn("focal", 3, 0.0, gamma=gamma)(LOGITS, LABELS) < per_sample_ce().mean()


def test_one_output_focal_is_torchvisions_sigmoid_focal_and_bce_at_gamma_0():
    logits, y = torch.tensor([[2.0], [-1.0], [0.3], [-3.0]]), torch.tensor([1, 1, 0, 0])
    target = y.float()[:, None]
    tv = sigmoid_focal_loss(logits, target, alpha=-1, gamma=2.0, reduction="mean")
    assert loss_fn("focal", 1, 0.0, gamma=2.0)(logits, y).item() == pytest.approx(tv.item())
    bce = F.binary_cross_entropy_with_logits(logits, target)
    assert loss_fn("focal", 1, 0.0, gamma=0.0)(logits, y).item() == pytest.approx(bce.item())
    w = torch.tensor([1.0, 4.0])[y][:, None]
    manual = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * w).sum()
    weighted = loss_fn("binary_cross_entropy", 1, 0.0, [1.0, 4.0])(logits, y)
    assert weighted.item() == pytest.approx((manual / w.sum()).item())


def test_binary_cross_entropy_on_several_outputs_is_refused():
    with pytest.raises(ConfigurationError, match="one output unit, the model has 3"):
        loss_fn("binary_cross_entropy", 3, 0.0)


MERGED = """\
name: {name}
seed: 0
data:
  dataset: fashion_mnist
  classes:
    merge:
      footwear: [sandal, sneaker, ankle_boot]
      top: [t_shirt_top, pullover, shirt]
      bag: [bag]
  subset: {{train_per_class: 60, test_per_class: 20}}
  validation: {{fraction: 0.25}}
model:
  layers:
    - {{type: flatten}}
    - {{type: dense, units: 32, activation: relu}}
    - {{type: dense, units: 3, activation: softmax}}
optimizer: {{type: adam, lr: 3e-3}}
train: {{epochs: 3, batch_size: 16, {train}}}
"""


def test_a_tiny_model_learns_the_merged_task_with_weights_focal_and_the_sampler(
    tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    extra = "loss: focal, focal_gamma: 2, class_weights: {bag: 2.0}, sampler: balanced"
    spec = load_spec_text(MERGED.format(name="merged", train=extra))
    result = train(spec, log=lambda _: None)
    last = result.history[-1]
    assert result.model(torch.zeros(1, 1, 28, 28)).shape == (1, 3)
    assert last["val_accuracy"] > 0.8, last  # 3 classes: chance is 1/3
    assert math.isfinite(last["loss"]) and last["loss"] < result.history[0]["loss"]

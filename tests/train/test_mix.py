"""Mixup and CutMix: what they do to a batch and its labels, that they stay off validation
data, and that a real MNIST run trains with them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.spec import load_spec_text
from pipeline.spec.data import AugmentSection
from pipeline.train.loop import Trainer, train
from pipeline.train.metrics import loss_fn
from pipeline.train.mix import BatchMixer, cutmix, mixup

MLP = """\
name: {name}
seed: 0
data:
  dataset: mnist
  subset: {{train_per_class: 100, test_per_class: 20}}
  validation: {{fraction: 0.2}}
model:
  layers:
    - {{type: flatten}}
    - {{type: dense, units: 64, activation: relu}}
    - {{type: dense, units: 10, activation: softmax}}
optimizer: {{type: adam, lr: 3e-3}}
train: {{epochs: {epochs}, batch_size: 32}}
augment: {mix}
"""


def quiet(_: str) -> None:
    pass


def batch(n: int = 8, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 12, 12, generator=g)
    y = torch.arange(n) % k  # neighbours always differ: each sample's own weight is readable
    return x, y


def mixer(k: int = 10, **augment) -> BatchMixer:
    a = AugmentSection.model_validate(augment)
    return BatchMixer(a, k, multi_label=False, seed=0, rank=0)


def test_mixup_is_the_formula_for_a_fixed_lambda():
    x, _ = batch()
    out, weight = mixup(x.clone(), 0.3, np.random.default_rng(0))
    assert weight == 0.3
    torch.testing.assert_close(out, 0.3 * x + 0.7 * x.roll(1, 0))


def test_mixup_mixes_images_and_labels_by_the_same_lambda():
    x, y = batch()
    out, target, dominant = mixer(mixup={"alpha": 0.4})(x, y, epoch=0, step=3)
    lam = target[0, y[0]].item()
    assert 0 < lam < 1 and lam != 0.5
    torch.testing.assert_close(out, lam * x + (1 - lam) * x.roll(1, 0))
    torch.testing.assert_close(
        target, lam * F.one_hot(y, 10).float() + (1 - lam) * F.one_hot(y.roll(1, 0), 10).float()
    )
    assert torch.equal(dominant, y if lam > 0.5 else y.roll(1, 0))
    again, _, _ = mixer(mixup={"alpha": 0.4})(x, y, epoch=0, step=3)
    other, _, _ = mixer(mixup={"alpha": 0.4})(x, y, epoch=0, step=4)
    assert torch.equal(out, again) and not torch.equal(out, other)  # seeded per step


def test_cutmix_label_weights_are_the_pasted_area():
    x, y = batch()
    for step in range(5):
        out, target, _ = mixer(cutmix={"alpha": 1.0})(x, y, epoch=0, step=step)
        pasted = (out != x).all(dim=1)  # (n, h, w): where the partner's pixels show
        assert torch.equal(out[:, :, pasted[0]], x.roll(1, 0)[:, :, pasted[0]])
        area = pasted[0].float().mean().item()
        assert (pasted == pasted[0]).all()  # one box for the batch
        own = target[torch.arange(len(y)), y]
        torch.testing.assert_close(own, torch.full_like(own, 1 - area))
        torch.testing.assert_close(target.sum(1), torch.ones(len(y)))


def test_cutmix_box_is_clipped_and_weighed_as_shown():
    x, _ = batch()
    rng = np.random.default_rng(1)
    out, weight = cutmix(x.clone(), 0.1, rng)
    shown = (out != x).all(dim=1)[0].float().mean().item()
    assert weight == pytest.approx(1 - shown)


def test_prob_and_switch():
    x, y = batch()
    never = mixer(mixup={"alpha": 0.2}, mix_prob=0.0)
    for step in range(5):
        out, target, dominant = never(x, y, 0, step)
        assert out is x and target is y and dominant is y
    always_cut = mixer(mixup={"alpha": 0.2}, cutmix={"alpha": 1.0}, switch_prob=1.0)
    for step in range(5):
        out, _, _ = always_cut(x, y, 0, step)
        changed = (out != x).any(dim=1)
        assert torch.equal(out[:, :, ~changed[0]], x[:, :, ~changed[0]])  # only a box changed


def test_soft_targets_take_label_smoothing_like_class_indices():
    logits, y = torch.randn(6, 10), torch.arange(6)
    ce = loss_fn("auto", 10, 0.1)
    torch.testing.assert_close(ce(logits, F.one_hot(y, 10).float()), ce(logits, y))
    bce = loss_fn("auto", 1, 0.1)
    torch.testing.assert_close(
        bce(logits[:, :1], (y % 2).float()[:, None]), bce(logits[:, :1], y % 2)
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    """The MNIST subset both runs train on, prepared once (the mix is no part of the data)."""
    import os

    from pipeline.data.prepare import prepare
    from tests.conftest import MIRROR

    if not (MIRROR / "MNIST" / "raw").is_dir():
        why = f"dataset mirror {MIRROR} is missing (set PIPELINE_DATA_MIRROR)"
        pytest.fail(why) if os.environ.get("CI") else pytest.skip(why)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PIPELINE_DATA_MIRROR", str(MIRROR))
        return prepare(mnist("data", "{}"), tmp_path_factory.mktemp("prepared"))


def mnist(name: str, mix: str, epochs: int = 2):
    return load_spec_text(MLP.format(name=name, epochs=epochs, mix=mix))


def test_a_tiny_mnist_run_with_mixup_and_cutmix_trains(workdir, prepared):
    spec = mnist("mixed", "{mixup: {alpha: 0.2}, cutmix: {alpha: 1.0}}", epochs=3)
    result = train(spec, prepared=prepared, log=quiet)
    first, last = result.history[0], result.history[-1]
    assert last["val_accuracy"] >= 0.8, last  # 800 training images, 3 epochs: 0.845
    assert last["loss"] < first["loss"]
    assert 0 < last["accuracy"] <= 1  # against the dominant label


def test_validation_batches_are_never_mixed(workdir, prepared):
    spec = mnist("val", "{mixup: {alpha: 1.0}, mix_prob: 1.0}", epochs=1)
    trainer = Trainer(spec, prepared, run=_run(workdir), log=quiet)
    seen: list[torch.Tensor] = []
    mix = trainer.mix
    trainer.mix = lambda x, y, e, s: (seen.append(x.clone()), mix(x, y, e, s))[1]
    row = trainer.run().history[-1]
    assert len(seen) == len(trainer.train_loader)  # called for training batches only
    x_val, y_val = prepared.split("val")
    plain = trainer.evaluate(trainer.val_loader)
    model = trainer.model.eval()
    with torch.no_grad():
        xs = x_val.float() / 255  # normalize: rescale
        loss = F.cross_entropy(model(xs), y_val).item()
    assert plain["loss"] == pytest.approx(loss, rel=1e-4)
    assert row["val_loss"] == pytest.approx(loss, rel=1e-4)  # the trained model's, unmixed


def _run(root: Path):
    from pipeline.run import Run

    return Run(root / "runs" / "val")


def test_multi_label_targets_mix_per_class():
    x, _ = batch(6)
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]])
    a = AugmentSection.model_validate({"mixup": {"alpha": 0.4}})
    out, target, dominant = BatchMixer(a, 3, multi_label=True, seed=0, rank=0)(x, y, 0, 0)
    lam = target[1, 1].item()  # class 1: in sample 1, not in its partner (sample 0)
    torch.testing.assert_close(target, lam * y.float() + (1 - lam) * y.roll(1, 0).float())
    torch.testing.assert_close(out, lam * x + (1 - lam) * x.roll(1, 0))
    assert torch.equal(dominant, (target >= 0.5).long())


def test_bad_mix_settings_are_located():
    from pipeline.spec import SpecError

    with pytest.raises(SpecError) as err:
        mnist("bad", "{mixup: {alpah: 0.2}, cutmix: {alpha: 0}}")
    text = "\n".join(p.format(source=False) for p in err.value.problems)
    assert "augment.mixup.alpah: unknown key" in text and "did you mean 'alpha'?" in text
    assert "augment.cutmix.alpha" in text and "greater than 0" in text
    spec = mnist("idle", "{switch_prob: 0.3}")
    (warning,) = [p for p in spec.warnings if p.code == "batch-mix"]
    assert warning.path == ("augment", "switch_prob") and warning.mark is not None


def test_a_resumed_run_mixes_as_the_uninterrupted_one(workdir, prepared):
    mix = "{mixup: {alpha: 0.4}, cutmix: {alpha: 1.0}, mix_prob: 0.8}"
    full = train(mnist("full", mix, epochs=2), prepared=prepared, log=quiet)
    train(mnist("resumed", mix, epochs=1), prepared=prepared, log=quiet)
    resumed = train(mnist("resumed", mix, epochs=2), prepared=prepared, resume=True, log=quiet)
    for (k, a), b in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    assert resumed.history[-1]["loss"] == full.history[-1]["loss"]


def test_class_weights_and_the_focal_loss_are_refused_with_soft_targets():
    from pipeline.spec import SpecError

    text = MLP.format(name="w", epochs=1, mix="{mixup: {alpha: 0.2}, cutmix: {alpha: 1.0}}")
    text = text.replace("batch_size: 32}", "batch_size: 32, class_weights: balanced, loss: focal}")
    with pytest.raises(SpecError) as err:
        load_spec_text(text)
    found = [(p.code, p.path, p.format(source=False)) for p in err.value.problems]
    assert {(c, p) for c, p, _ in found} == {
        ("weighted-loss-targets", ("train", "class_weights")),
        ("weighted-loss-targets", ("train", "loss")),
    }, found
    assert len(found) == 2, found
    assert all("mixup's soft targets and cutmix's soft targets" in m for _, _, m in found)
    assert all(p.mark is not None for p in err.value.problems)


def test_the_builders_refuse_soft_targets_they_cannot_weigh():
    from pipeline.errors import ConfigurationError

    logits, y = torch.randn(4, 10), torch.arange(4)
    soft = F.one_hot(y, 10).float()
    with pytest.raises(ConfigurationError, match="class weights: each sample needs a class index"):
        loss_fn("cross_entropy", 10, 0.0, [1.0] * 10)(logits, soft)
    with pytest.raises(ConfigurationError, match="the focal loss: each sample needs a class index"):
        loss_fn("focal", 10, 0.0)(logits, soft)
    loss_fn("cross_entropy", 10, 0.0, [1.0] * 10)(logits, y)  # class indices still weigh

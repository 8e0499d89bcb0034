"""train.ema and train.swa: the averages follow their formulas, validation and evaluate use
them, and a run with both kinds of averaging resumes bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.data.prepare import prepare
from pipeline.evaluate import evaluate
from pipeline.run import Run
from pipeline.spec import load_spec_text
from pipeline.spec.train import EMA
from pipeline.train import checkpoint as ckpt
from pipeline.train.averaging import WeightEMA
from pipeline.train.loop import Trainer, train

MLP = """\
name: {name}
seed: 4
data:
  dataset: mnist
  subset: {{train_per_class: 30, test_per_class: 5}}
  validation: {{fraction: 0.2}}
model:
  layers:
    - {{type: flatten}}
    - {{type: dense, units: 32, activation: relu}}
    - {{type: batch_norm}}
    - {{type: dense, units: 10, activation: softmax}}
optimizer: {{type: sgd, lr: 0.05, momentum: 0.9}}
train: {{epochs: {epochs}, batch_size: 32}}
"""


def mlp(name: str, epochs: int, overrides=()):
    return load_spec_text(MLP.format(name=name, epochs=epochs), list(overrides))


def quiet(_: str) -> None:
    pass


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_follows_the_formula_step_by_step(warmup):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ema = WeightEMA(model, EMA(decay=0.9, warmup=warmup))
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for t in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model(torch.randn(8, 4))  # in train mode: moves the batch-norm statistics
        decay = min(0.9, (1 + t) / (10 + t)) if warmup else 0.9
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                expected[k] = decay * expected[k] + (1 - decay) * v
            else:
                expected[k] = v.clone()  # the batch count is copied
        ema.update()
    for k, v in ema.weights().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-6)
    assert ema.weights()["1.num_batches_tracked"].item() == 4
    # the model trains on unchanged: the average is a copy
    assert not torch.equal(ema.weights()["0.weight"], model.state_dict()["0.weight"])


def test_a_run_with_ema_validates_saves_and_evaluates_the_average(workdir):
    spec = mlp("ema", 2, ["train.ema={decay: 0.9}"])
    result = train(spec, log=quiet)
    folder = workdir / "runs" / "ema" / "checkpoints"
    last, best = ckpt.load(folder / "last.pt"), ckpt.load(folder / "best.pt")
    steps = 2 * 8  # 240 training images in batches of 32, 2 epochs
    assert last["ema"]["steps"] == steps
    average, own = last["ema"]["weights"], last["model"]
    assert not torch.equal(average["dense_1.dense.weight"], own["dense_1.dense.weight"])
    # the trained model ends with the average
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, average[k]), k
    # validation ran the average: the history's val_loss is the average's
    trainer = Trainer(spec, prepare(spec), run=Run(workdir / "scratch"), log=quiet)
    trainer.model.load_state_dict(average)
    val = trainer.evaluate(trainer.val_loader, trainer.model)
    assert val["loss"] == pytest.approx(result.history[-1]["val_loss"], rel=1e-6)
    trainer.model.load_state_dict(own)
    assert trainer.evaluate(trainer.val_loader, trainer.model)["loss"] != pytest.approx(
        val["loss"], rel=1e-3
    )
    # evaluate, export and predict load the average of the best checkpoint
    model, _ = ckpt.load_trained(spec, "best")
    for k, v in model.state_dict().items():
        assert torch.equal(v, best["ema"]["weights"][k]), k
    metrics = evaluate(spec, log=quiet)
    assert metrics["checkpoint_epoch"] == best["epoch"]
    assert json.loads((workdir / "runs" / "ema" / "train.json").read_text())["weights"]["ema"]


def test_swa_averages_the_epoch_end_weights(workdir):
    swa = "train.swa={start_epoch: 2, lr: 0.01, anneal_epochs: 1}"
    # keep_top 3 of 3 epochs keeps every epoch's weights to check the average against
    top = "train.checkpoint={monitor: loss, keep_top: 3}"
    spec = mlp("swa", 3, [swa, top, "evaluate.checkpoint=swa"])
    result = train(spec, log=quiet)
    folder = workdir / "runs" / "swa" / "checkpoints"
    epochs = {ckpt.load(p)["epoch"]: ckpt.load(p) for p in folder.glob("top_epoch*.pt")}
    assert sorted(epochs) == [1, 2, 3]
    averaged = ckpt.load(folder / "swa.pt")
    assert averaged["averaged_epochs"] == 2
    for k, v in averaged["model"].items():
        if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue  # recomputed by update_bn
        mean = (epochs[2]["model"][k] + epochs[3]["model"][k]) / 2
        torch.testing.assert_close(v, mean, rtol=1e-5, atol=1e-6)
    # update_bn recomputed the statistics for the averaged weights
    stat = "batch_norm_1.running_mean"
    assert not torch.equal(averaged["model"][stat], epochs[3]["model"][stat])
    # SWALR: epoch 2 trains at the schedule's rate, then annealed to swa.lr in one epoch
    assert [r["lr"] for r in result.history] == pytest.approx([0.05, 0.05, 0.01])
    summary = json.loads((workdir / "runs" / "swa" / "train.json").read_text())
    assert summary["weights"]["swa"]["averaged_epochs"] == 2
    assert "val_accuracy" in summary["weights"]["swa"]
    assert evaluate(spec, log=quiet)["checkpoint_epoch"] == 3

    # export and predict take the weights evaluate measured (evaluate.checkpoint: swa) unless
    # told another checkpoint
    import numpy as np
    import onnxruntime
    import yaml
    from PIL import Image

    from pipeline.export import export_run
    from pipeline.predict import PredictError, predict_files

    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    swa_model, _ = ckpt.load_trained(spec, "swa")
    best_model, _ = ckpt.load_trained(spec, "best")
    with torch.no_grad():
        want, other = swa_model(x), best_model(x)
    assert not torch.allclose(want, other, atol=1e-4)
    onnx_file = export_run(spec, ["onnx"], out_dir=workdir / "exported")["onnx"]
    session = onnxruntime.InferenceSession(str(onnx_file))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)

    tree = yaml.safe_load(MLP.format(name="swa", epochs=3))
    tree["train"] |= {"swa": {"start_epoch": 2, "lr": 0.01, "anneal_epochs": 1}}
    tree["train"]["checkpoint"] = {"monitor": "loss", "keep_top": 3}
    tree["evaluate"] = {"checkpoint": "swa"}
    (workdir / "swa.yaml").write_text(yaml.safe_dump(tree))
    files = []
    for i in range(3):
        files.append(workdir / f"img{i}.png")
        Image.fromarray((np.random.default_rng(i).random((28, 28)) * 255).astype("uint8")).save(
            files[-1]
        )

    def probabilities(**how) -> list[dict[str, float]]:
        return [e["probabilities"] for e in predict_files(workdir / "swa.yaml", files, **how)]

    assert probabilities() == probabilities(checkpoint="swa") != probabilities(checkpoint="best")
    with pytest.raises(PredictError, match="exported file, which holds its own weights"):
        predict_files(onnx_file, files, checkpoint="best")


def test_a_run_with_ema_swa_and_accumulation_resumes_bit_for_bit(workdir):
    more = [
        "train.ema={decay: 0.8, warmup: true}",
        "train.swa={start_epoch: 2, lr: 0.01}",
        "train.accumulate=3",
        "train.checkpoint.keep_top=2",
    ]
    full = train(mlp("full", 4, more), log=quiet)
    train(mlp("resumed", 2, more), log=quiet)
    resumed = train(mlp("resumed", 4, more), resume=True, log=quiet)
    timing = ("time_s", "train_images_per_s")
    strip = [{k: v for k, v in r.items() if k not in timing} for r in full.history]
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed.history] == strip
    a, b = (ckpt.load(Path("runs") / n / "checkpoints" / "last.pt") for n in ("full", "resumed"))
    for part in ("model", "ema", "swa"):
        flat_a, flat_b = _tensors(a[part]), _tensors(b[part])
        assert flat_a.keys() == flat_b.keys()
        for k in flat_a:
            assert torch.equal(flat_a[k], flat_b[k]), (part, k)
    names = [
        sorted(p.name for p in (Path("runs") / n / "checkpoints").glob("top_*"))
        for n in ("full", "resumed")
    ]
    assert names[0] == names[1] and len(names[0]) == 2


def _tensors(tree, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        return {
            k: v for key, sub in tree.items() for k, v in _tensors(sub, f"{prefix}.{key}").items()
        }
    return {prefix: torch.tensor(float(tree))} if isinstance(tree, int | float) else {}


def test_resuming_a_run_without_the_average_the_spec_now_asks_for_is_a_clear_error(workdir):
    train(mlp("plain", 1), log=quiet)
    with pytest.raises(ckpt.CheckpointError, match=r"holds no train\.ema average"):
        train(mlp("plain", 2, ["train.ema={decay: 0.9}"]), resume=True, log=quiet)

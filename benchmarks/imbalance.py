"""What class weights, the balanced sampler and the focal loss do on a skewed task: Fashion-MNIST
merged into "upper" (t-shirt/top, pullover, shirt, dress: 24,000 training images) against "coat"
(6,000), 4 to 1. A 784-64-2 MLP, Adam 1e-3, 2 epochs, batch 128, seed 0, 10% validation; the
test split (4,000 upper, 1,000 coat) scored by accuracy, per-class recall and balanced accuracy
(the mean recall). Figures in docs/imbalance.md.

    PIPELINE_DATA_MIRROR=../shared/datasets .venv/bin/python benchmarks/imbalance.py
"""

from __future__ import annotations

import os
import tempfile
import time

import torch

from pipeline.data import prepare
from pipeline.spec import load_spec_text
from pipeline.train.loop import train

SPEC = """
name: {name}
seed: 0
data:
  dataset: fashion_mnist
  classes: {{merge: {{upper: [t_shirt_top, pullover, shirt, dress], coat: [coat]}}}}
  validation: {{fraction: 0.1}}
model:
  layers:
    - {{type: flatten}}
    - {{type: dense, units: 64, activation: relu}}
    - {{type: dense, units: 2, activation: softmax}}
optimizer: {{type: adam, lr: 1e-3}}
train: {{epochs: 2, batch_size: 128{extra}}}
"""

VARIANTS = {
    "plain": "",
    "class_weights: balanced": ", class_weights: balanced",
    "sampler: balanced": ", sampler: balanced",
    "loss: focal": ", loss: focal",
    "focal + balanced weights": ", loss: focal, class_weights: balanced",
}


def main() -> None:
    os.environ.setdefault("PIPELINE_ORCHESTRATION", "off")
    os.chdir(tempfile.mkdtemp(prefix="imbalance-"))
    print("| train | accuracy | recall upper | recall coat | balanced accuracy | time |")
    print("| --- | --- | --- | --- | --- | --- |")
    for i, (label, extra) in enumerate(VARIANTS.items()):
        spec = load_spec_text(SPEC.format(name=f"v{i}", extra=extra))
        prepared = prepare(spec, "data")
        start = time.perf_counter()
        model = train(spec, prepared=prepared, log=lambda _: None).model.eval()
        seconds = time.perf_counter() - start
        x, y = prepared.split("test")
        with torch.no_grad():
            pred = model((x.float() / 255 - prepared.mean[0]) / prepared.std[0]).argmax(1)
        recall = [((pred == c) & (y == c)).sum().item() / (y == c).sum().item() for c in (0, 1)]
        accuracy = (pred == y).float().mean().item()
        print(
            f"| {label} | {accuracy:.4f} | {recall[0]:.3f} | {recall[1]:.3f} | "
            f"{sum(recall) / 2:.4f} | {seconds:.0f} s |"
        )


if __name__ == "__main__":
    main()

"""A model built from the new layer kinds (branch, group norm, separable and depthwise
convolutions, layer norm) learns real MNIST."""

from __future__ import annotations

from pipeline.evaluate import evaluate
from pipeline.spec import load_spec_text
from pipeline.train.loop import train

INCEPTION = """\
name: inception
seed: 0
data:
  dataset: mnist
  subset: {train_per_class: 60, test_per_class: 30}
  validation: {fraction: 0.1}
  normalize: standardize
model:
  defaults:
    conv2d: {padding: same, activation: relu}
  layers:
    - {type: conv2d, filters: 8, kernel_size: 3}
    - {type: group_norm, groups: 4}
    - {type: max_pool2d}
    - type: branch
      branches:
        - [{type: conv2d, filters: 8, kernel_size: 1}]
        - [{type: separable_conv2d, filters: 8, kernel_size: 3, padding: same, activation: relu}]
        - [{type: max_pool2d, pool_size: 3, stride: 1, padding: same}]
    - {type: group_norm, groups: 4}
    - {type: max_pool2d}
    - {type: depthwise_conv2d, kernel_size: 3, padding: same, activation: relu}
    - {type: flatten}
    - {type: layer_norm}
    - {type: dense, units: 10, activation: softmax}
optimizer: {type: adam, lr: 3e-3}
train: {epochs: 3, batch_size: 32}
"""


def test_a_branching_group_norm_model_learns_mnist(workdir):
    spec = load_spec_text(INCEPTION)
    result = train(spec, log=lambda _: None)
    first, last = result.history[0], result.history[-1]
    assert last["loss"] < first["loss"]
    metrics = evaluate(spec, log=lambda _: None)
    assert metrics["test_accuracy"] >= 0.8, metrics

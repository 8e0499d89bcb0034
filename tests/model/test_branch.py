"""The branch composite: each list runs on the same input, the outputs are concatenated or
added; its layers are named, summarized, counted and selected like a residual's."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.export import export
from pipeline.model import build_model, summarize
from pipeline.spec.footprint import footprint
from pipeline.spec.selectors import selectable
from pipeline.train.params import layer_table, select, set_trainable

NESTED = """
- {type: conv2d, filters: 4, kernel_size: 3, padding: same}
- type: branch
  activation: relu
  branches:
    - [{type: conv2d, filters: 2, kernel_size: 1, name: one}]
    - - {type: conv2d, filters: 3, kernel_size: 3, padding: same}
      - type: residual
        layers: [{type: group_norm, groups: 3}, {type: conv2d, filters: 3, kernel_size: 1}]
    - []
- {type: global_avg_pool2d}
- {type: dense, units: 10, trainable: false}
"""


def test_concat_stacks_the_branches_channels_and_an_empty_branch_passes_the_input(spec_of):
    spec = spec_of(
        """
        - type: branch
          branches:
            - [{type: conv2d, filters: 2, kernel_size: 1, kernel_init: ones, bias: false}]
            - []
        - {type: flatten}
        - {type: dense, units: 10}
        """,
        [3, 4, 4],
        check=False,
    )
    branch = build_model(spec)[0]
    x = torch.randn(2, 3, 4, 4)
    y = branch(x)
    assert y.shape == (2, 5, 4, 4)
    assert torch.allclose(y[:, 0], x.sum(1)) and torch.allclose(y[:, 1], x.sum(1))
    assert torch.equal(y[:, 2:], x)


def test_add_sums_the_branches_then_applies_the_activation(spec_of):
    spec = spec_of(
        """
        - type: branch
          merge: add
          activation: relu
          branches:
            - [{type: scale, factor: -3}]
            - []
        - {type: flatten}
        - {type: dense, units: 10}
        """,
        [2, 3, 3],
        check=False,
    )
    x = torch.randn(4, 2, 3, 3)
    assert torch.allclose(build_model(spec)[0](x), torch.relu(-2 * x))


def test_the_branch_s_layers_are_counted_summarized_and_selectable(spec_of):
    spec = spec_of(NESTED, [1, 8, 8], check=False)
    model = build_model(spec)
    rows = summarize(model, spec, expand=True).rows
    assert [r.name for r in rows] == [
        "conv2d_1",
        "branch_1",
        "branch_1.one",
        "branch_1.conv2d_3",  # conv2d_2 is "one": named layers count in their kind's numbering
        "branch_1.residual_1",
        "global_avg_pool2d_1",
        "dense_1",
    ]
    assert rows[1].output_shape == (9, 8, 8)  # 2 + 3 + the input's 4
    fp = footprint(spec.model.layers, (1, 8, 8))
    summary = summarize(model, spec)
    assert (fp.stored, fp.frozen) == (summary.total_params, summary.non_trainable_params)
    # the torch-free table the layer-selectors check uses is the trainer's
    table = layer_table(model)
    known = selectable(spec.model.layers)
    assert [s.name for s in known] == list(table)
    for s in known:
        assert model.get_submodule(s.path) is table[s.name], s
    assert {"one", "branch_1.one", "group_norm_1", "conv2d_4"} <= set(table)


def test_freezing_a_layer_inside_a_branch_freezes_only_it(spec_of):
    model = build_model(spec_of(NESTED, [1, 8, 8], check=False))
    set_trainable(select(model, ["branch_1.conv2d_3", "group_norm_1"]), False)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {
        "branch_1.branches.1.conv2d_3.conv.weight",
        "branch_1.branches.1.conv2d_3.conv.bias",
        "branch_1.branches.1.residual_1.branch.group_norm_1.weight",
        "branch_1.branches.1.residual_1.branch.group_norm_1.bias",
        "dense_1.dense.weight",
        "dense_1.dense.bias",
    }


NEW_KINDS = """\
    - {type: conv2d, filters: 4, kernel_size: 3, padding: same}
    - type: branch
      branches:
        - [{type: separable_conv2d, filters: 4, kernel_size: 3, padding: same,
            batch_norm: before}]
        - [{type: depthwise_conv2d, kernel_size: 3, depth_multiplier: 2, stride: 2,
            padding: same}, {type: upsample, scale_factor: 2, mode: bilinear}]
    - {type: group_norm, groups: 3}
    - {type: layer_norm}
    - {type: global_avg_pool2d}
    - {type: dense, units: 3, activation: softmax}
"""


def test_the_new_kinds_export_to_onnx_with_batch_norm_folded(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from tests.test_export import META, build, inputs, spec_of

    model = build(NEW_KINDS)
    paths = export(
        spec_of(NEW_KINDS), model, tmp_path, ["onnx"], fold=True, prepared_meta=META, latency=False
    )
    report = json.loads(paths["metadata"].read_text())["fold"]
    assert report["folded"] == ["branch_1.branches.0.separable_conv2d_1.bn"]
    session = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    x = inputs(5)
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.inference_mode():
        want = model(x)
    assert float((torch.from_numpy(got) - want).abs().max()) < 1e-4

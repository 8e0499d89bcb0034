"""build_model: registry coverage, logits out, every layer kind, padding, residuals, freezing,
reproducibility."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.model import ModelBuildError, Network, assert_shapes, build_model
from pipeline.model.modules import ResidualBlock, WeightedBlock
from pipeline.model.registry import LAYER_BUILDERS
from pipeline.spec.base import LAYERS
from pipeline.spec.shapes import infer_shapes, named_layers

MNIST = """
- {type: conv2d, filters: 8, kernel_size: 3, activation: relu}
- {type: max_pool2d}
- {type: flatten}
- {type: dense, units: 10, activation: softmax}
"""

# Every plain layer kind and padding mode on feature maps, then on flat features. Comments:
# the schema's output shape (C, H, W).
MAP_KINDS = """
- {type: conv2d, filters: 8, kernel_size: 3, stride: 2, padding: same, batch_norm: before,
   activation: relu}                                            # 8,32,32
- {type: conv2d, filters: 8, kernel_size: 4, padding: same, dilation: 2, groups: 2,
   batch_norm: after, activation: {type: prelu}}                # 8,32,32
- {type: conv2d, filters: 16, kernel_size: [3, 5], padding: [1, 2], bias: false,
   activation: {type: leaky_relu, alpha: 0.2}}                  # 16,32,32
- {type: conv2d, filters: 16, kernel_size: 1, activation: {type: elu, alpha: 0.5},
   kernel_init: orthogonal}                                     # 16,32,32 (1x1)
- {type: avg_pool2d, pool_size: 3, stride: 1, padding: 1}       # 16,32,32
- {type: max_pool2d, pool_size: 3, stride: 2, padding: same}    # 16,16,16
- {type: conv2d, filters: 16, kernel_size: 2, activation: {type: gelu, approximate: tanh}}  # 15
- {type: avg_pool2d, pool_size: 2, padding: same}               # 16,8,8 (odd input)
- {type: max_pool2d, pool_size: 3, stride: 1, padding: 1}       # 16,8,8
- {type: lp_pool2d, pool_size: 2, stride: 1}                    # 16,7,7
- {type: conv2d, filters: 16, kernel_size: 2, stride: 2, padding: same}  # 16,4,4 (asymmetric)
- {type: conv2d, filters: 16, kernel_size: 3, stride: [1, 2], padding: same, dilation: 2}  # 16,4,2
- {type: adaptive_avg_pool2d, output_size: 4}                   # 16,4,4
- type: residual
  activation: relu
  layers:
    - {type: conv2d, filters: 32, kernel_size: 3, stride: 2, padding: same, activation: relu}
    - {type: conv2d, filters: 32, kernel_size: 3, padding: same}  # 32,2,2: projection
- type: residual
  shortcut: identity
  layers:
    - {type: conv2d, filters: 32, kernel_size: 3, padding: same, batch_norm: before,
       activation: silu}
    - {type: spatial_dropout2d, rate: 0.1}
- {type: upsample, scale_factor: 2}                             # 32,4,4
- {type: depthwise_conv2d, kernel_size: 3, depth_multiplier: 2, stride: 2, padding: same,
   activation: relu}                                            # 64,2,2
- {type: separable_conv2d, filters: 32, kernel_size: 3, padding: same, batch_norm: after}
- {type: group_norm, groups: 8}
- {type: layer_norm}
- type: branch
  merge: add
  branches:
    - [{type: conv2d, filters: 32, kernel_size: 1}]
    - []                                                        # 32,2,2
- {type: upsample, size: [4, 3], mode: bilinear}                # 32,4,3
- {type: selu}
- {type: tanh}
- {type: sigmoid}
- {type: rrelu}
- {type: relu}
- {type: leaky_relu}
- {type: prelu, shared: true}
- {type: elu}
- {type: gelu}
- {type: silu}
- {type: linear}
- {type: batch_norm, momentum: 0.01, eps: 0.001}
- {type: scale, factor: 0.5}
- {type: adaptive_max_pool2d, output_size: [3, 2]}              # 32,3,2
- {type: global_avg_pool2d}                                     # 32
- {type: layer_norm, affine: false}
- {type: flatten}
- {type: dropout, rate: 0.2}
- {type: alpha_dropout, rate: 0.1}
- {type: dense, units: 16, batch_norm: before, activation: selu}
- type: residual
  layers:
    - {type: dense, units: 8, activation: relu}                 # 8: linear projection
- {type: batch_norm}
- {type: dense, units: 10}
- {type: softmax}
"""

COMPOSITE_KINDS = """
- {type: reuse, spec: a.yaml, drop_last: 2}                     # 3,32,32
- {type: backbone, arch: mobilenet_v2}                          # 1280,1,1
- {type: global_max_pool2d}
- {type: dense, units: 10, activation: softmax}
"""
SOURCE_A = """
name: a
data: {dataset: cifar10}
model:
  layers:
    - {type: conv2d, filters: 3, kernel_size: 3, padding: same}
    - {type: batch_norm}
    - {type: flatten}
    - {type: dense, units: 10, activation: softmax}
"""


def test_every_layer_kind_has_a_builder():
    missing = set(LAYERS.kinds) - {"block"} - {cls.type_name for cls in LAYER_BUILDERS}
    assert not missing


def test_forward_returns_logits_and_predict_proba_probabilities(spec_of):
    model = build_model(spec_of(MNIST, [1, 28, 28]))
    assert model.output_activation == "softmax"
    assert not any(isinstance(m, nn.Softmax) for m in model.modules())
    x = torch.rand(4, 1, 28, 28)
    logits = model(x)
    assert not torch.allclose(logits.sum(1), torch.ones(4))
    assert torch.allclose(model.predict_proba(x).sum(1), torch.ones(4))
    assert torch.allclose(model.predict_proba(x), logits.softmax(1))


def test_sigmoid_output_is_kept_out_of_forward(spec_of):
    model = build_model(
        spec_of(
            """
        - {type: dense, units: 4, activation: relu}
        - {type: dense, units: 1, activation: sigmoid, kernel_init: {type: constant, value: 3}}
        """,
            [3],
            check=False,
        )
    )
    assert model.output_activation == "sigmoid"
    x = torch.ones(2, 3)
    logits = model(x)
    assert (logits > 1).all()  # relu(ones @ W) summed with weight 3: not squashed
    assert torch.allclose(model.predict_proba(x), torch.sigmoid(logits))


def test_final_softmax_layer_becomes_identity(spec_of):
    model = build_model(
        spec_of(
            """
        - {type: dense, units: 10}
        - {type: softmax}
        """,
            [5],
            check=False,
        )
    )
    assert model.output_activation == "softmax"
    assert isinstance(model.get_submodule("softmax_1"), nn.Identity)


def test_softmax_before_a_batch_norm_stays(spec_of):
    model = build_model(
        spec_of(
            "- {type: dense, units: 10, activation: softmax, batch_norm: after}", [5], check=False
        )
    )
    assert model.output_activation is None
    assert isinstance(model.dense_1.act, nn.Softmax)
    logits = model(torch.rand(3, 5))
    assert torch.allclose(model.predict_proba(torch.rand(3, 5)).sum(1), torch.ones(3))
    assert logits.shape == (3, 10)


def test_weighted_layer_structure_and_names(spec_of):
    model = build_model(
        spec_of(
            """
        - {type: conv2d, filters: 4, kernel_size: 3, batch_norm: before, activation: relu}
        - {type: conv2d, filters: 4, kernel_size: 3, batch_norm: after, activation: relu, name: top}
        - {type: flatten}
        - {type: dense, units: 10}
        """,
            [1, 28, 28],
        )
    )
    assert isinstance(model, Network)
    assert list(model.conv2d_1._modules) == ["conv", "bn", "act"]
    assert list(model.get_submodule("top")._modules) == ["conv", "act", "bn"]
    assert isinstance(model.conv2d_1.bn, nn.BatchNorm2d)
    assert "conv2d_1.conv.weight" in model.state_dict()
    assert "top.bn.running_mean" in model.state_dict()
    assert isinstance(model.dense_1, WeightedBlock)
    assert model.dense_1.core.in_features == 4 * 24 * 24


def _write_source(tmp_path, monkeypatch):
    (tmp_path / "a.yaml").write_text(SOURCE_A)
    monkeypatch.chdir(tmp_path)  # inline specs resolve relative paths from the working folder


def test_all_kinds_build_and_match_the_schema_shapes(spec_of, tmp_path, monkeypatch):
    _write_source(tmp_path, monkeypatch)
    map_spec = spec_of(MAP_KINDS, [3, 64, 64], data="{dataset: cifar10, image_size: 64}")
    comp_spec = spec_of(COMPOSITE_KINDS, [3, 32, 32], data="{dataset: cifar10}")
    kinds = {
        layer.type
        for spec in (map_spec, comp_spec)
        for _, _, layer in named_layers(spec.model.layers)
    }
    assert kinds == set(LAYERS.kinds) - {"block"}

    for spec in (map_spec, comp_spec):
        meta = build_model(spec, device="meta", load_weights=False)
        assert_shapes(meta, spec)  # also run inside build_model; explicit here
        model = build_model(spec, load_weights=False)
        assert_shapes(model, spec)
        model.eval()
        shape = spec.model.resolved_input_shape()
        out = model(torch.rand(2, *shape))
        assert out.shape == (2, 10)
        assert torch.isfinite(out).all()
    assert infer_shapes(map_spec.model.layers, (3, 64, 64), ())[11] == (16, 4, 2)


def test_assert_shapes_catches_a_wrong_module(spec_of):
    spec = spec_of(MNIST, [1, 28, 28])
    model = build_model(spec)
    model.max_pool2d_1 = nn.MaxPool2d(3)  # a builder bug: 26 -> 8, not 13
    with pytest.raises(AssertionError, match=r"max_pool2d_1.*\(8, 13, 13\).*\(8, 8, 8\)"):
        assert_shapes(model, spec)


def _single(spec_of, layer: str, shape: list[int]) -> nn.Module:
    return build_model(spec_of(f"- {layer}", shape, check=False))[0]


def test_strided_same_conv_pads_like_tensorflow(spec_of):
    conv = _single(
        spec_of,
        "{type: conv2d, filters: 1, kernel_size: 3, stride: 2, padding: same, kernel_init: ones}",
        [1, 8, 8],
    )
    out = conv(torch.ones(1, 1, 8, 8))
    assert out.shape == (1, 1, 4, 4)
    # TF: total pad 1, all of it bottom/right: the first window is inside, the last half out
    assert out[0, 0, 0, 0].item() == 9.0
    assert out[0, 0, -1, -1].item() == 4.0


def test_same_pools_ignore_the_padding(spec_of):
    avg = _single(spec_of, "{type: avg_pool2d, pool_size: 3, stride: 2, padding: same}", [2, 7, 7])
    out = avg(torch.ones(1, 2, 7, 7))
    assert out.shape == (1, 2, 4, 4) and torch.allclose(out, torch.ones_like(out))
    mx = _single(spec_of, "{type: max_pool2d, pool_size: 2, padding: same}", [2, 5, 5])
    out = mx(-torch.ones(1, 2, 5, 5))
    assert out.shape == (1, 2, 3, 3) and torch.all(out == -1)


def test_residual_identity_adds_the_input(spec_of):
    block = _single(
        spec_of,
        "{type: residual, layers: [{type: conv2d, filters: 4, kernel_size: 3, padding: same}]}",
        [4, 6, 6],
    )
    assert isinstance(block, ResidualBlock) and isinstance(block.shortcut, nn.Identity)
    x = torch.randn(2, 4, 6, 6)
    assert torch.allclose(block(x), block.branch(x) + x)


@pytest.mark.parametrize(
    ("shortcut", "filters", "stride", "proj_stride"),
    [("auto", 8, 2, (2, 2)), ("projection", 4, 1, (1, 1))],
)
def test_residual_projection(spec_of, shortcut, filters, stride, proj_stride):
    block = _single(
        spec_of,
        f"{{type: residual, shortcut: {shortcut}, activation: relu, "
        f"layers: [{{type: conv2d, filters: {filters}, kernel_size: 3, "
        f"stride: {stride}, padding: same}}]}}",
        [4, 6, 6],
    )
    proj = block.shortcut.proj
    assert isinstance(proj, nn.Conv2d) and proj.kernel_size == (1, 1) and proj.bias is None
    assert proj.stride == proj_stride and proj.out_channels == filters
    assert isinstance(block.shortcut.bn, nn.BatchNorm2d)
    block.eval()
    x = torch.randn(2, 4, 6, 6)
    assert torch.allclose(block(x), torch.relu(block.branch(x) + block.shortcut(x)))


def test_trainable_false_freezes_and_keeps_batch_norm_in_inference(spec_of):
    model = build_model(
        spec_of(
            """
        - {type: conv2d, filters: 4, kernel_size: 3, batch_norm: before, trainable: false}
        - {type: batch_norm, trainable: false}
        - {type: flatten}
        - {type: dense, units: 10}
        """,
            [1, 28, 28],
        )
    )
    assert not any(p.requires_grad for p in model.conv2d_1.parameters())
    assert all(p.requires_grad for p in model.dense_1.parameters())
    model.train()
    assert model.training and model.dense_1.training
    assert not model.conv2d_1.bn.training and not model.batch_norm_1.training
    model.batch_norm_1.requires_grad_(True)  # unfreezing lets it train again
    assert model.train().batch_norm_1.training


def test_build_is_reproducible_and_seeded(spec_of):
    spec = spec_of(MNIST, [1, 28, 28])
    state = torch.random.get_rng_state()
    a, b = build_model(spec).state_dict(), build_model(spec).state_dict()
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    assert all(torch.equal(a[k], b[k]) for k in a)
    spec.seed = 1
    c = build_model(spec).state_dict()
    assert not torch.equal(a["conv2d_1.conv.weight"], c["conv2d_1.conv.weight"])


def test_torch_default_init_is_reproducible_too(spec_of):
    spec = spec_of(MNIST, [1, 28, 28], extra="init: {kernel: torch_default}")
    a, b = build_model(spec).state_dict(), build_model(spec).state_dict()
    assert torch.equal(a["dense_1.dense.weight"], b["dense_1.dense.weight"])


def test_meta_build_has_no_data(spec_of):
    model = build_model(spec_of(MNIST, [1, 28, 28]), device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 8 * 9 + 8 + 8 * 13 * 13 * 10 + 10


def test_unknown_input_shape_is_a_build_error(spec_of):
    spec = spec_of(MNIST, [1, 28, 28])
    spec.model.input_shape = None
    with pytest.raises(ModelBuildError, match="input_shape"):
        build_model(spec)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_build_on_cuda_matches_the_cpu_build(spec_of):
    spec = spec_of(MNIST, [1, 28, 28])
    cpu, gpu = build_model(spec), build_model(spec, device="cuda")
    assert all(p.is_cuda for p in gpu.parameters())
    for key, value in cpu.state_dict().items():  # initialized on the CPU, then moved
        assert torch.equal(value, gpu.state_dict()[key].cpu()), key
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(gpu.predict_proba(x.cuda()).cpu(), cpu.predict_proba(x), atol=1e-5)

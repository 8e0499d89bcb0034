"""timm backbones (``arch: timm/<name>``): timm's own model, its blocks, weights and shapes."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from pipeline.model import ModelBuildError, build_model, summarize
from pipeline.model.timm_backbones import block_names
from pipeline.spec import load_spec_text
from pipeline.spec.footprint import footprint
from pipeline.spec.paths import ALLOWED_ENV
from pipeline.spec.selectors import selectable
from pipeline.spec.timm_table import TIMM_ARCHS
from pipeline.train.params import layer_table, select, set_trainable

DATA = "{dataset: cifar10}"
NAME = "test_resnet"  # timm's tiny ResNet (its own test architecture): fast on a CPU


@pytest.fixture(autouse=True)
def _weights_in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.setenv(ALLOWED_ENV, str(tmp_path))


def timm_spec(spec_of, name: str = NAME, extra: str = "", size: int = 64, head: bool = True):
    layers = f"- {{type: backbone, arch: timm/{name}{extra}}}"
    if head:
        layers += "\n- {type: global_avg_pool2d}\n- {type: dense, units: 10}"
    return spec_of(layers, [3, size, size], data=DATA, check=False)


def reference(name: str, top: bool) -> nn.Module:
    options = {} if top else {"num_classes": 0, "global_pool": ""}
    return timm.create_model(name, pretrained=False, **options)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "name", ["test_resnet", "test_efficientnet", "test_convnext", "mobilenetv3_small_050"]
)
@pytest.mark.parametrize("top", [False, True])
def test_parameter_count_blocks_and_shape_are_timm_s(spec_of, name, top):
    spec = timm_spec(spec_of, name, f", include_top: {str(top).lower()}", head=False)
    model = build_model(spec, device="meta")  # checks the table's shapes against the model's
    net = model.backbone_1
    with torch.device("meta"):
        want = reference(name, top)
    assert count(net) == count(want)
    assert list(net._modules) == list(want._modules)
    arch = TIMM_ARCHS[f"timm/{name}"]
    assert list(net._modules) == (arch.top_blocks if top else arch.blocks)
    assert block_names(net) == arch.children(top)
    # validation's selectable names are the built model's, in the same order
    assert [s.name for s in selectable(spec.model.layers)] == list(layer_table(model))
    assert count(net) == (arch.top_params if top else arch.params)
    fp = footprint(spec.model.layers, (3, 64, 64))
    assert fp.stored == summarize(model, spec).total_params


def test_random_init_is_seeded_reproducible_and_leaves_torch_s_generator(spec_of):
    spec = timm_spec(spec_of)
    torch.manual_seed(5)
    state = torch.random.get_rng_state()
    a, b = build_model(spec), build_model(spec)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), key
    clone = copy.deepcopy(a)  # what EMA/SWA copies do
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(clone.eval()(x), a.eval()(x))
    spec.seed = 1
    c = build_model(spec)
    assert not torch.equal(a.backbone_1.conv1[0].weight, c.backbone_1.conv1[0].weight)


@pytest.mark.parametrize("top", [False, True])
def test_a_weights_file_of_the_timm_model_gives_its_outputs(spec_of, tmp_path, top):
    torch.manual_seed(3)
    source = timm.create_model(NAME).eval()
    with torch.no_grad():  # non-default statistics, so a skipped buffer would show
        for m in source.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    torch.save(source.state_dict(), tmp_path / "w.pth")  # the full model's: with its fc
    extra = f", weights: {{path: {tmp_path / 'w.pth'}}}, include_top: {str(top).lower()}"
    model = build_model(timm_spec(spec_of, extra=extra, head=False)).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = source(x) if top else source.forward_features(x)
        assert torch.allclose(model(x), want, atol=1e-5)


def test_a_timm_backbone_takes_one_channel_and_an_rgb_weights_file_sums_its_first_conv(
    spec_of, tmp_path
):
    """Grayscale MNIST into a timm backbone: timm's in_chans, and a weights file saved from the
    RGB model adapted as timm adapts pretrained weights, so a grey image gives what the RGB
    model gives for that image in R, G and B."""
    layers = f"- {{type: backbone, arch: timm/{NAME}, include_top: false}}"
    spec = spec_of(layers, [1, 64, 64], data="{dataset: mnist, image_size: [64, 64]}")
    model = build_model(spec).eval()
    with torch.device("meta"):
        want = timm.create_model(NAME, in_chans=1, num_classes=0, global_pool="")
    assert count(model) == count(want) < count(reference(NAME, top=False))
    assert footprint(spec.model.layers, (1, 64, 64)).stored == summarize(model, spec).total_params

    torch.manual_seed(3)
    source = timm.create_model(NAME).eval()  # RGB
    torch.save(source.state_dict(), tmp_path / "rgb.pth")
    extra = f", weights: {{path: {tmp_path / 'rgb.pth'}}}"
    grey = build_model(spec_of(layers.replace("}", extra + "}"), [1, 64, 64], check=False)).eval()
    first = grey.backbone_1.conv1[0].weight
    assert first.shape[1] == 1
    torch.testing.assert_close(first, source.conv1[0].weight.sum(1, keepdim=True))
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            grey(x), source.forward_features(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4
        )


def test_unknown_pretrained_tag_lists_timm_s(spec_of):
    with pytest.raises(ModelBuildError, match=r"no weights 'in22k'; valid: DEFAULT, r160_in1k"):
        build_model(timm_spec(spec_of, extra=", weights: in22k"))


def test_failed_download_suggests_a_local_file(spec_of, monkeypatch):
    # No test may download: replace timm's fetch with what an offline machine sees.
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    spec = timm_spec(spec_of, extra=", weights: DEFAULT")
    with pytest.raises(ModelBuildError, match=r"could not download.*weights: \{path:"):
        build_model(spec)
    assert build_model(spec, load_weights=False) is not None  # summaries never download


def test_summary_expands_timm_s_blocks_and_freezing_one_freezes_its_parameters(spec_of):
    spec = timm_spec(spec_of)
    model = build_model(spec, device="meta")
    summary = summarize(model, spec, expand=True)
    rows = {r.name: r for r in summary.rows}
    assert rows["backbone_1"].type == "timm/test_resnet"
    blocks = [n.split(".", 1)[1] for n in rows if n.startswith("backbone_1.")]
    assert blocks == list(model.backbone_1._modules)
    assert rows["backbone_1.layer2"].trainable == count(model.backbone_1.layer2)

    net = build_model(spec)
    set_trainable(select(net, ["backbone_1.layer2"]), False)
    layer2 = {id(p) for p in net.backbone_1.layer2.parameters()}
    assert layer2 and all(not p.requires_grad for p in net.backbone_1.layer2.parameters())
    others = [p for p in net.parameters() if id(p) not in layer2]
    assert others and all(p.requires_grad for p in others)


def test_a_stage_inside_a_timm_block_freezes_alone(spec_of):
    net = build_model(timm_spec(spec_of, "test_efficientnet"))
    assert "blocks.2" in layer_table(net) and "backbone_1.blocks.4" in layer_table(net)
    set_trainable(select(net, ["backbone_1.blocks.2"]), False)
    stage = {id(p) for p in net.backbone_1.blocks[2].parameters()}
    assert stage and all(p.requires_grad == (id(p) not in stage) for p in net.parameters())


TRAINED = """\
name: timm_mnist
seed: 0
data:
  dataset: mnist
  image_size: [32, 32]
  subset: {train_per_class: 30, test_per_class: 10}
  validation: {fraction: 0.25}
  normalize: standardize
model:
  layers:
    - {type: backbone, arch: timm/test_resnet}
    - {type: global_avg_pool2d}
    - {type: dense, units: 10, activation: softmax}
optimizer: {type: adam, lr: 1e-3}
train: {epochs: 3, batch_size: 30, freeze: [backbone_1.layer1]}
"""


@pytest.fixture
def one_thread():
    """A model this small gains nothing from more threads, and where the CPU is shared they
    wait on each other (126 s instead of 14 s for the test below on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_timm_backbone_trains_and_evaluates_on_mnist(tmp_path, mirror, monkeypatch, one_thread):
    from pipeline.evaluate import evaluate
    from pipeline.train.loop import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    spec = load_spec_text(TRAINED)
    before = build_model(spec).state_dict()
    result = train(spec, log=lambda _m: None)
    after = result.model.state_dict()
    first, *_, last = result.history
    assert last["loss"] < first["loss"]
    frozen = [k for k in before if k.startswith("backbone_1.layer1.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(
        before["backbone_1.layer2.0.conv1.weight"], after["backbone_1.layer2.0.conv1.weight"]
    )
    metrics = evaluate(spec)
    assert metrics["test_accuracy"] > 0.2  # 0.3 here from 225 images; chance is 0.1

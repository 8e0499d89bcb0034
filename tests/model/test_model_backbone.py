"""Backbones: torchvision architectures under the spec's block names, weights from files."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from pipeline.model import ModelBuildError, build_model, summarize
from pipeline.model.modules import BackboneNet
from pipeline.spec.composite import ARCHS
from pipeline.spec.paths import ALLOWED_ENV

DATA = "{dataset: cifar10}"
CLASSIFIER = ["avgpool", "flatten", "classifier"]
FC = ["avgpool", "flatten", "fc"]
TOPS = {
    "vgg16": CLASSIFIER,
    "vgg19": CLASSIFIER,
    "resnet18": FC,
    "resnet34": FC,
    "resnet50": FC,
    "mobilenet_v2": CLASSIFIER,
}


@pytest.fixture(autouse=True)
def _weights_in_tmp_path(tmp_path, monkeypatch):
    # the inline specs' project is the working folder: allow the weights files written here
    monkeypatch.setenv(ALLOWED_ENV, str(tmp_path))


def backbone_spec(spec_of, arch: str, extra: str = "", size: int = 32):
    return spec_of(
        f"- {{type: backbone, arch: {arch}{extra}}}", [3, size, size], data=DATA, check=False
    )


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("top", [False, True])
def test_every_arch_has_the_block_names_and_shapes(spec_of, arch, top):
    spec = backbone_spec(spec_of, arch, f", include_top: {str(top).lower()}", size=64)
    model = build_model(spec, device="meta")  # build_model checks the shapes
    net = model.backbone_1
    assert isinstance(net, BackboneNet)
    assert list(net._modules) == ARCHS[arch].blocks + (TOPS[arch] if top else [])
    with torch.device("meta"):
        reference = torchvision.models.get_model(arch, weights=None)
    total = sum(p.numel() for p in model.parameters())
    full = sum(p.numel() for p in reference.parameters())
    top_params = sum(
        p.numel()
        for n in TOPS[arch]
        if hasattr(reference, n)
        for p in getattr(reference, n).parameters()
    )
    assert total == (full if top else full - top_params)


def test_vgg_blocks_hold_the_convs(spec_of):
    model = build_model(backbone_spec(spec_of, "vgg16"), device="meta")
    block = model.get_submodule("backbone_1.block5_conv1")
    assert isinstance(block[0], nn.Conv2d) and block[0].in_channels == 512
    assert isinstance(model.get_submodule("backbone_1.block5_pool"), nn.MaxPool2d)
    layers = model.layer_modules()
    assert layers["block5_conv1"] is block and layers["backbone_1.block5_conv1"] is block


def test_random_backbone_is_initialized_and_reproducible(spec_of):
    spec = backbone_spec(spec_of, "mobilenet_v2")
    a, b = build_model(spec), build_model(spec)
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), key
        assert torch.isfinite(x.float()).all(), key  # nothing left from to_empty
    bn = a.backbone_1.features_1.conv[0][1]
    assert torch.all(bn.running_var == 1) and torch.all(bn.weight == 1)
    conv = a.backbone_1.features_0[0]
    fan_out = conv.out_channels * 9
    assert conv.weight.var().item() == pytest.approx(2 / fan_out, rel=0.25)


@pytest.mark.parametrize("top", [False, True])
def test_torchvision_weights_file_loads_and_matches_torchvision(spec_of, tmp_path, top):
    torch.manual_seed(3)
    reference = torchvision.models.mobilenet_v2().eval()
    with torch.no_grad():  # non-default statistics, so a skipped buffer would show
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    torch.save(reference.state_dict(), tmp_path / "mnv2.pth")
    weights = f", weights: {{path: {tmp_path / 'mnv2.pth'}}}, include_top: {str(top).lower()}"
    spec = backbone_spec(spec_of, "mobilenet_v2", weights)
    model = build_model(spec).eval()
    got = model.backbone_1
    assert torch.equal(got.features_3.conv[1][0].weight, reference.features[3].conv[1][0].weight)
    assert torch.equal(got.features_18[1].running_mean, reference.features[18][1].running_mean)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = reference(x) if top else reference.features(x)
        assert torch.allclose(model(x), want, atol=1e-5)


def test_renamed_weights_file_loads_too(spec_of, tmp_path):
    source = build_model(backbone_spec(spec_of, "resnet18"))
    torch.save(source.backbone_1.state_dict(), tmp_path / "ours.pt")
    spec = backbone_spec(spec_of, "resnet18", f", weights: {{path: {tmp_path / 'ours.pt'}}}")
    spec.seed = 99
    model = build_model(spec)
    assert torch.equal(
        model.backbone_1.layer4[1].conv2.weight, source.backbone_1.layer4[1].conv2.weight
    )


def test_missing_weights_file_names_the_path(spec_of, tmp_path):
    spec = backbone_spec(spec_of, "resnet18", ", weights: {path: no/such.pth}")
    with pytest.raises(ModelBuildError, match=r"no/such\.pth not found"):
        build_model(spec)
    assert build_model(spec, load_weights=False).backbone_1.conv1.weight.shape == (64, 3, 7, 7)


def test_weights_of_another_arch_do_not_fit(spec_of, tmp_path):
    torch.save(
        build_model(backbone_spec(spec_of, "mobilenet_v2")).backbone_1.state_dict(),
        tmp_path / "mnv2.pt",
    )
    spec = backbone_spec(spec_of, "resnet18", f", weights: {{path: {tmp_path / 'mnv2.pt'}}}")
    with pytest.raises(ModelBuildError, match="does not fit the model: missing keys"):
        build_model(spec)


def test_unknown_weights_name_lists_the_valid_ones(spec_of):
    spec = backbone_spec(spec_of, "vgg16", ", weights: IMAGENET9K")
    with pytest.raises(ModelBuildError, match=r"IMAGENET1K_V1.*DEFAULT"):
        build_model(spec)


def test_failed_download_suggests_a_local_file(spec_of, monkeypatch, tmp_path):
    # No test may download: replace torchvision's fetch with what an offline machine sees.
    def offline(url, *args, **kwargs):
        raise OSError(f"<urlopen error [Errno -3] Temporary failure in name resolution> {url}")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    spec = backbone_spec(spec_of, "resnet18", ", weights: DEFAULT")
    with pytest.raises(ModelBuildError, match=r"could not download.*weights: \{path:"):
        build_model(spec)
    assert build_model(spec, load_weights=False) is not None  # summaries never download


def test_summary_shows_a_backbone_as_one_row_or_expanded(spec_of):
    spec = spec_of(
        """
        - {type: backbone, arch: vgg16, trainable: false}
        - {type: global_avg_pool2d}
        - {type: dense, units: 10}
        """,
        [3, 64, 64],
        data="{dataset: cifar10, image_size: 64}",
    )
    model = build_model(spec, device="meta")
    summary = summarize(model, spec)
    assert [r.name for r in summary.rows] == ["backbone_1", "global_avg_pool2d_1", "dense_1"]
    assert summary.rows[0].type == "vgg16" and summary.rows[0].non_trainable == 14_714_688
    assert summary.non_trainable_params == 14_714_688
    assert summary.trainable_params == 5_130
    expanded = summarize(model, spec, expand=True)
    names = [r.name for r in expanded.rows]
    assert names[1] == "backbone_1.block1_conv1" and "backbone_1.block5_pool" in names
    conv = next(r for r in expanded.rows if r.name == "backbone_1.block1_conv1")
    assert conv.output_shape == (64, 64, 64) and conv.macs == 64 * 64 * 64 * 3 * 9
    assert expanded.total_params == summary.total_params

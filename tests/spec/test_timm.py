"""timm backbones at validation: names, sizes and normalization from the table, torch-free."""

from __future__ import annotations

import subprocess
import sys

from pipeline.spec import load_spec
from pipeline.spec.checks import run_checks

SPEC = """\
name: t
data: {{dataset: {dataset}, image_size: {size}{normalize}}}
model:
  layers:
    - {{type: backbone, arch: {arch}{weights}}}
    - {{type: global_avg_pool2d}}
    - {{type: dense, units: 10}}
"""


def text(
    arch: str = "timm/resnet18",
    size: int = 64,
    normalize: str = "",
    weights: str = "",
    dataset: str = "cifar10",
):
    return SPEC.format(arch=arch, size=size, normalize=normalize, weights=weights, dataset=dataset)


def test_unknown_timm_name_is_located_with_a_did_you_mean(problems):
    (p,) = problems(text("timm/resnet81"))
    assert p.path == ("model", "layers", 0, "arch") and p.mark.line == 5
    assert "did you mean 'timm/resnet18'" in (p.hint or "")


def test_a_name_timm_has_but_the_table_lacks_says_how_to_add_it(problems):
    (p,) = problems(text("timm/resnet101"))
    assert p.path == ("model", "layers", 0, "arch") and p.mark.line == 5
    assert "TABLE_NAMES" in p.message and "pipeline docs" in p.message
    (p,) = problems(text("timm/convnext_smal"))  # closest to a name the table lacks
    assert "did you mean 'timm/convnext_small'?" in p.message and "TABLE_NAMES" in p.message


def test_too_small_an_input_is_located_at_the_backbone(problems):
    errors = [p for p in problems(text(size=16)) if p.severity == "error"]
    (p,) = errors
    assert p.path == ("model", "layers", 0) and p.mark.line == 5
    assert "timm/resnet18 needs inputs of at least 32x32, got 16x16" in p.message


def test_the_output_shape_is_the_table_s(write):
    spec = load_spec(write(text("timm/mobilenetv3_small_100", size=97)))
    # timm's feature model keeps its 1024-channel head conv; 97 -> 49 -> 25 -> 13 -> 7 -> 4
    assert spec.model.layers[0].output_shape((3, 97, 97)) == (1024, 4, 4)


def test_pretrained_weights_want_timm_s_normalization(write):
    spec = load_spec(write(text(weights=", weights: DEFAULT")))
    (warning,) = [p for p in run_checks(spec) if p.code == "timm-normalization"]
    assert warning.path == ("data", "normalize") and "0.485" in (warning.hint or "")
    imagenet = ", normalize: {mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}"
    spec = load_spec(write(text(weights=", weights: DEFAULT", normalize=imagenet)))
    assert not [p for p in run_checks(spec) if p.code == "timm-normalization"]
    spec = load_spec(write(text()))  # random init: any normalization
    assert not [p for p in run_checks(spec) if p.code == "timm-normalization"]


def test_grayscale_input_suits_timm_but_not_a_torchvision_backbone(write, problems):
    spec = load_spec(write(text(dataset="mnist")))  # 1 channel: timm's in_chans
    assert spec.model.layers[0].output_shape((1, 64, 64)) == (512, 2, 2)
    (p,) = [p for p in problems(text("resnet18", dataset="mnist")) if p.severity == "error"]
    assert "resnet18 takes RGB input (3 channels), got 1" in p.message
    assert "timm/<name>" in (p.hint or "") and "color_mode: rgb" in (p.hint or "")
    # pretrained RGB weights, summed over R, G and B for one channel: ImageNet's statistics
    # averaged over the channels
    spec = load_spec(write(text(weights=", weights: DEFAULT", dataset="mnist")))
    (warning,) = [p for p in run_checks(spec) if p.code == "timm-normalization"]
    assert "mean: [0.449], std: [0.226]" in (warning.hint or "")
    grey = ", normalize: {mean: [0.449], std: [0.226]}"
    spec = load_spec(write(text(weights=", weights: DEFAULT", dataset="mnist", normalize=grey)))
    assert not [p for p in run_checks(spec) if p.code == "timm-normalization"]


def test_validating_a_timm_backbone_imports_neither_torch_nor_timm(write):
    code = (
        "import sys; from pipeline.cli import main; "
        f"rc = main(['validate', {str(write(text()))!r}]); "
        "assert not {'torch', 'timm'} & set(sys.modules), 'torch or timm imported'; sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

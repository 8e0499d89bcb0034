"""Every spec in specs/ validates, through the same API users get for their own specs."""

from pathlib import Path

import pytest

from pipeline.spec import load_spec, load_spec_text, to_yaml
from pipeline.testing import check_spec, spec_tests

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))

test_example_specs = spec_tests("specs/*.yaml", strict=True, root=ROOT)


def test_there_are_example_specs_for_every_seed_model():
    names = {p.stem for p in SPECS}
    assert {
        "mnist_convnet",
        "cats_dogs_convnet",
        "cats_dogs_dropout_augment",
        "fashion_bn_mlp",
        "fashion_dropout_mlp",
        "leaky_relu_mlp",
        "prelu_mlp",
        "selu_mlp",
        "vgg16_transfer",
        "fashion_task_a",
        "fashion_task_b_on_a",
    } <= names


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_spec_declares_the_schema_for_editors(path):
    assert path.read_text().startswith("# yaml-language-server: $schema=../spec.schema.json\n")


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_resolved_spec_revalidates_to_the_same_spec(path, tmp_path):
    spec = load_spec(path)
    text = to_yaml(spec)
    assert "extends" not in text and "type: block" not in text
    again = load_spec_text(text, base_dir=path.parent)
    assert again.model_dump() == spec.model_dump()


def test_check_spec_raises_with_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\ndata: {dataset: mnist}\nmodel:\n  layers:\n"
        "    - {type: dense, unitz: 3}\n    - {type: conv2d, filters: 0}\n"
    )
    with pytest.raises(AssertionError) as err:
        check_spec(bad)
    text = str(err.value)
    assert f"{bad}:5:21" in text and "did you mean 'units'" in text
    assert f"{bad}:6:" in text and "kernel_size" in text

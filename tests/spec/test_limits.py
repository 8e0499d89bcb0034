"""Input limits, checked before any work: each a located error (and exit 1), never a traceback
or a hang."""

from __future__ import annotations

import time

import pytest

from pipeline.cli import main
from pipeline.spec import SpecError, load_spec, load_spec_text
from pipeline.spec.base import MAX_SIZE
from pipeline.spec.resolve import MAX_LAYERS
from pipeline.spec.yamlio import MAX_BYTES, MAX_INT_DIGITS
from tests.spec.conftest import BASE


def _one(err: pytest.ExceptionInfo[SpecError]):
    (p,) = err.value.errors
    return p


def test_a_spec_file_over_the_size_bound_is_refused_before_parsing(write, capsys):
    path = write(BASE + "description: |\n" + ("  " + "x" * 98 + "\n") * ((4 << 20) // 100))
    began = time.monotonic()
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert time.monotonic() - began < 2  # parsing 50 MB took 140 s
    p = _one(err)
    assert (p.mark.file, p.mark.line, p.code) == (str(path), 1, "too-large")
    assert "at most 1 MiB" in p.message and f"({path.stat().st_size} bytes)" in p.message
    assert main(["validate", str(path)]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_inline_text_and_overrides_have_the_same_bound():
    with pytest.raises(SpecError, match="at most 1 MiB") as err:
        load_spec_text(BASE + "description: " + "x" * MAX_BYTES + "\n")
    assert _one(err).mark.file == "<string>"
    with pytest.raises(SpecError, match="at most 1 MiB"):
        load_spec_text(BASE, ["description=" + "x" * MAX_BYTES])


@pytest.mark.parametrize(
    "text",
    [
        BASE + "seed: " + "1" * 5000 + "\n",
        BASE.replace("filters: 8", "filters: 1" + "0" * 100),
        "9" * 5000 + "\n",  # a bare number as the whole document
    ],
)
def test_a_huge_integer_is_a_located_error_not_a_value_error(write, text):
    path = write(text)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    p = _one(err)
    assert p.code == "int-too-large" and p.mark.file == str(path)
    assert f"at most {MAX_INT_DIGITS}" in p.message
    assert len(str(err.value)) < 2000  # the quoted source line is cut around the caret


def test_a_huge_integer_in_an_override_points_at_the_override(write):
    with pytest.raises(SpecError) as err:
        load_spec(write(BASE), ["seed=" + "7" * 5000])
    p = _one(err)
    assert p.code == "int-too-large" and p.mark.file.startswith("-S seed=777")


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("filters: 8", "filters: 100000000000", ("model", "layers", 0, "filters")),
        ("units: 10", "units: 4294967296", ("model", "layers", 2, "units")),
        (
            "kernel_size: 3",
            "kernel_size: [3, 9999999999]",
            ("model", "layers", 0, "kernel_size", 1),
        ),
        (
            "kernel_size: 3",
            "kernel_size: 3, padding: 9999999999",
            ("model", "layers", 0, "padding"),
        ),
        ("kernel_size: 3", "kernel_size: 3, groups: 9999999999", ("model", "layers", 0, "groups")),
        ("model:\n", "model:\n  input_shape: [1, 99999999, 28]\n", ("model", "input_shape", 1)),
    ],
)
def test_sizes_in_a_model_are_bounded_and_say_the_bound(problems, old, new, where):
    errors = [p for p in problems(BASE.replace(old, new)) if p.severity == "error"]
    assert [p.path for p in errors] == [where]
    assert str(MAX_SIZE) in errors[0].message


def test_the_bound_still_admits_large_real_models(write):
    spec = load_spec(write(BASE.replace("filters: 8", "filters: 4096")))
    assert spec.model.layers[0].filters == 4096


def test_summary_of_a_huge_layer_is_exit_1_not_a_crash(write, capsys):
    # 10**22 filters validated, then torch failed in C++ (a 40-frame trace) in summary
    path = write(BASE.replace("filters: 8", "filters: 10000000000000000000000"))
    assert main(["summary", str(path)]) == 1
    err = capsys.readouterr().err
    assert "model.layers[0].filters" in err and str(MAX_SIZE) in err and "frame #" not in err


def test_a_long_name_is_refused_before_it_names_a_folder(problems):
    p = problems(BASE.replace("name: t", "name: " + "a" * 300))[0]
    assert p.path == ("name",) and "at most 100 characters" in p.message
    p = problems(BASE.replace("name: t", "name: ../../etc"))[0]
    assert p.path == ("name",) and "pattern" in p.message


def test_an_override_with_broken_yaml_shows_the_yaml_error_in_the_override(write, capsys):
    with pytest.raises(SpecError) as err:
        load_spec(write(BASE), ["train.epochs=[1,"])
    p = _one(err)
    assert p.mark.file == "-S train.epochs=[1," and p.path == ("train", "epochs")
    assert "invalid YAML" in p.message and p.mark.column == len("train.epochs=[1,") + 1
    assert "1 error in spec" not in p.message
    assert main(["validate", str(write(BASE)), "-S", "augment={mode: online"]) == 1
    shown = capsys.readouterr().err
    assert "-S augment={mode: online:1:" in shown and "invalid YAML" in shown


def test_a_block_repeated_too_often_is_refused_at_once(write):
    text = BASE.replace(
        "  layers:\n",
        "  blocks: {b: [{type: dropout, rate: 0.1}]}\n  layers:\n"
        "    - {type: block, block: b, repeat: 1000000000}\n",
    )
    began = time.monotonic()
    with pytest.raises(SpecError) as err:
        load_spec(write(text))
    assert time.monotonic() - began < 5
    assert f"from 1 to {MAX_LAYERS}" in _one(err).message

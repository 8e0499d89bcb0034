"""Tests of the safe, located YAML loader for spec files."""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import pytest

from pipeline.spec.errors import Mark, SpecError
from pipeline.spec.located import MappingNode, SequenceNode, copy_node, key_mark, locate, mapping
from pipeline.spec.yamlio import load_file, load_text

SPEC = """\
name: demo
train:
  lr: 1e-3
  epochs: 10_000
model:
  layers:
    - {type: conv2d, filters: 32}
    - type: dense
      units: 10
"""


def errors_of(text: str, file: str = "f.yaml") -> SpecError:
    with pytest.raises(SpecError) as info:
        load_text(text, file)
    return info.value


def only(err: SpecError):
    assert len(err.problems) == 1, err.format()
    return err.problems[0]


def file_problem(path: Path):
    with pytest.raises(SpecError) as info:
        load_file(path)
    return only(info.value)


def at(line: int, column: int, file: str = "s.yaml") -> Mark:
    return Mark(file, line, column)


# --- marks and locate -----------------------------------------------------------------------


def test_marks_of_keys_values_and_nested_items() -> None:
    spec = load_text(SPEC, "s.yaml")
    assert isinstance(spec, MappingNode)
    assert spec.mark == at(1, 1)
    assert spec.key_marks["name"] == at(1, 1)
    assert spec.value_marks["name"] == at(1, 7)
    assert spec["train"].key_marks["lr"] == at(3, 3)
    assert spec["train"].value_marks["lr"] == at(3, 7)
    layers = spec["model"]["layers"]
    assert isinstance(layers, SequenceNode)
    assert layers.item_marks == [at(7, 7), at(8, 7)]
    flow = layers[0]
    assert isinstance(flow, MappingNode)
    assert flow == {"type": "conv2d", "filters": 32}
    assert flow.mark == at(7, 7)
    assert flow.key_marks["filters"] == at(7, 22)
    assert flow.value_marks["filters"] == at(7, 31)
    assert layers[1].key_marks["units"] == at(9, 7)
    assert layers[1].value_marks["units"] == at(9, 14)


def test_nodes_are_plain_dicts_and_lists_to_consumers() -> None:
    spec = load_text(SPEC)
    assert type(spec).__mro__[1] is dict
    assert spec["model"]["layers"][1] == {"type": "dense", "units": 10}
    assert isinstance(spec["model"]["layers"], list)


def test_locate_existing_paths() -> None:
    spec = load_text(SPEC, "s.yaml")
    assert locate(spec, ("train", "lr")) == at(3, 7)
    assert locate(spec, ("model", "layers", 0, "filters")) == at(7, 31)
    assert locate(spec, ("model", "layers", 1)) == at(8, 7)
    assert locate(spec, ()) == at(1, 1)


def test_locate_missing_key_gives_deepest_container() -> None:
    spec = load_text(SPEC, "s.yaml")
    assert locate(spec, ("model", "layers", 1, "activation")) == at(8, 7)
    assert locate(spec, ("model", "optimizer")) == at(6, 3)
    assert locate(spec, ("model", "layers", 7, "units")) == at(7, 5)


def test_locate_through_a_scalar_and_bad_input_never_raises() -> None:
    spec = load_text(SPEC, "s.yaml")
    assert locate(spec, ("name", "first", 0)) == at(1, 7)
    assert locate(spec, ("model", "layers", "x")) == at(7, 5)
    assert locate({"a": 1}, ("a",)) is None
    assert locate(None, ("a", 1)) is None


def test_locate_skips_union_tag_parts_pydantic_adds() -> None:
    spec = load_text(SPEC, "s.yaml")
    assert locate(spec, ("model", "layers", 0, "conv2d", "filters")) == at(7, 31)


def test_key_mark_points_at_the_key() -> None:
    spec = load_text(SPEC, "s.yaml")
    assert key_mark(spec, ("train", "lr")) == at(3, 3)
    assert key_mark(spec, ("model", "layers", 0, "filters")) == at(7, 22)
    assert key_mark(spec, ("train", "nope")) == at(3, 3)


# --- scalars: YAML 1.2 core --------------------------------------------------------------


def test_floats_in_exponent_notation_are_floats() -> None:
    spec = load_text("a: 1e-3\nb: 1E5\nc: -2.5e+3\nd: .5\ne: 1.\nf: 3.14\ng: +1.5\n")
    assert spec == {"a": 0.001, "b": 1e5, "c": -2500.0, "d": 0.5, "e": 1.0, "f": 3.14, "g": 1.5}
    assert all(type(v) is float for v in spec.values())


def test_special_floats() -> None:
    spec = load_text("a: .inf\nb: -.inf\nc: .nan\nd: +.INF\n")
    assert spec["a"] == math.inf and spec["b"] == -math.inf and spec["d"] == math.inf
    assert math.isnan(spec["c"])


def test_yaml_11_booleans_stay_strings() -> None:
    spec = load_text("a: yes\nb: no\nc: on\nd: off\ne: y\nf: n\ncountry: NO\npadding: same\n")
    assert spec == {
        "a": "yes",
        "b": "no",
        "c": "on",
        "d": "off",
        "e": "y",
        "f": "n",
        "country": "NO",
        "padding": "same",
    }


def test_core_booleans_nulls_and_ints() -> None:
    spec = load_text(
        "t: true\nT: TRUE\nf: False\nn1: ~\nn2: null\nn3:\n"
        "i: 10_000\nneg: -7\no: 0o17\nh: 0x1F\nz: 007\nbad: 1__0\n"
    )
    assert spec == {
        "t": True,
        "T": True,
        "f": False,
        "n1": None,
        "n2": None,
        "n3": None,
        "i": 10000,
        "neg": -7,
        "o": 15,
        "h": 31,
        "z": 7,
        "bad": "1__0",
    }
    assert type(spec["i"]) is int and type(spec["t"]) is bool


def test_timestamps_and_quoted_values_stay_strings() -> None:
    spec = load_text("d: 2024-01-31\nt: 2001-12-14t21:59:43.10-05:00\nq: '1e-3'\nr: \"true\"\n")
    assert spec == {
        "d": "2024-01-31",
        "t": "2001-12-14t21:59:43.10-05:00",
        "q": "1e-3",
        "r": "true",
    }


def test_load_text_does_not_change_pyyaml_globals() -> None:
    import yaml

    load_text("a: 1e-3\n")
    assert yaml.safe_load("a: 1e-3\nb: yes\n") == {"a": "1e-3", "b": True}


# --- safety ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "!!python/object/apply:os.system ['touch {marker}']",
        "!!python/name:os.system",
        "!!python/object:collections.OrderedDict {{}}",
        "!foo bar",
        "!!binary aGVsbG8=",
        "!!str plain",
        "! bare",
    ],
)
def test_every_tag_is_rejected(value: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    err = errors_of(f"name: x\nrun: {value.format(marker=marker)}\n")
    problem = only(err)
    assert problem.code == "yaml-tag"
    assert "tags are not allowed" in problem.message
    assert problem.mark == Mark("f.yaml", 2, 6)
    assert problem.path == ("run",)
    assert not marker.exists()


def test_tags_on_keys_and_collections_are_rejected() -> None:
    err = errors_of("!!map\na: !!seq [1]\n? !!python/name:os.system\n: 1\n")
    assert {p.code for p in err.problems} == {"yaml-tag"}
    assert [p.mark.line for p in err.problems] == [1, 2, 3]


def test_duplicate_keys_report_both_lines_and_every_duplicate() -> None:
    err = errors_of("name: x\nlr: 1\nopt:\n  lr: 2\n  lr: 3\nlr: 4\n")
    assert [p.code for p in err.problems] == ["duplicate-key", "duplicate-key"]
    nested, top = err.problems
    assert nested.message == "duplicate key 'lr' (first at line 4)"
    assert nested.mark == Mark("f.yaml", 5, 3) and nested.path == ("opt", "lr")
    assert top.message == "duplicate key 'lr' (first at line 2)"
    assert top.mark == Mark("f.yaml", 6, 1)
    assert top.source_line == "lr: 4"


def test_merge_key_is_rejected_with_extends_hint() -> None:
    problem = only(errors_of("base: &b {lr: 1}\ntrain:\n  <<: *b\n"))
    assert problem.code == "merge-key"
    assert "extends" in (problem.hint or "")
    assert problem.mark == Mark("f.yaml", 3, 3)


def test_plain_aliases_are_allowed_and_copied() -> None:
    spec = load_text("base: &b {lr: 0.1}\nx: *b\ny: *b\n", "s.yaml")
    assert spec["x"] == spec["y"] == {"lr": 0.1}
    assert spec["x"] is not spec["y"]
    assert spec["x"].value_marks["lr"] == at(1, 15)


def billion_laughs(levels: int) -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_fails_fast() -> None:
    started = time.perf_counter()
    problem = only(errors_of(billion_laughs(9)))
    assert time.perf_counter() - started < 1.0
    assert problem.code == "alias-bomb"
    assert "billion-laughs" in problem.message


def test_moderate_alias_use_is_fine() -> None:
    assert len(load_text(billion_laughs(2))["l2"]) == 9


@pytest.mark.parametrize("text", ["a: &x\n  b: *x\n", "a: &x [1, [*x]]\n"])
def test_recursive_alias_is_rejected(text: str) -> None:
    problem = only(errors_of(text))
    assert problem.code == "alias-recursive"
    assert problem.mark == (Mark("f.yaml", 2, 6) if "b:" in text else Mark("f.yaml", 1, 12))


def test_undefined_alias_is_a_syntax_problem() -> None:
    problem = only(errors_of("a: *nope\n"))
    assert problem.code == "yaml-syntax" and "nope" in problem.message


# --- syntax and shape problems -----------------------------------------------------------


def test_tab_indentation() -> None:
    problem = only(errors_of("name: x\nmodel:\n\tlayers: []\n"))
    assert problem.code == "yaml-syntax"
    assert problem.mark == Mark("f.yaml", 3, 1)
    assert "spaces" in (problem.hint or "")
    assert problem.source_line == "\tlayers: []"
    assert "f.yaml:3:1" in problem.format()


def test_syntax_error_marks_are_one_based() -> None:
    problem = only(errors_of("a: [1, 2\n"))
    assert problem.mark == Mark("f.yaml", 2, 1)
    assert problem.message == (
        "invalid YAML: while parsing a flow sequence at line 1, "
        "expected ',' or ']', but got '<stream end>'"
    )


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "~\n"])
def test_empty_spec(text: str) -> None:
    problem = only(errors_of(text))
    assert problem.code == "empty"
    assert problem.message.startswith("the spec is empty")
    assert problem.mark == Mark("f.yaml", 1, 1)


def test_top_level_list_or_scalar() -> None:
    problem = only(errors_of("- name: x\n"))
    assert problem.code == "not-mapping" and problem.message.endswith("got a list")
    assert only(errors_of("just words\n")).code == "not-mapping"


def test_require_mapping_false_allows_any_top_level() -> None:
    assert load_text("- 1\n- 2\n", require_mapping=False) == [1, 2]
    assert load_text("", require_mapping=False) is None


@pytest.mark.parametrize("key", ["1", "null", "true", "1.5", "[a]", "{a: 1}"])
def test_non_string_keys(key: str) -> None:
    problem = only(errors_of(f"name: x\n? {key}\n: v\n"))
    assert problem.code == "key-type"
    assert "keys must be strings" in problem.message
    assert problem.mark == Mark("f.yaml", 2, 3)


def test_quoted_number_keys_are_fine() -> None:
    assert load_text("'1': a\nyes: b\n") == {"1": "a", "yes": "b"}


def test_multiple_documents() -> None:
    problem = only(errors_of("name: a\n---\nname: b\n"))
    assert problem.code == "multiple-documents"
    assert problem.message == "one YAML document per spec"
    assert problem.mark == Mark("f.yaml", 2, 1)


def test_control_character_is_located() -> None:
    problem = only(errors_of("name: x\nbad: a\x07b\n"))
    assert problem.code == "yaml-syntax"
    assert problem.mark == Mark("f.yaml", 2, 7)


# --- copies and merged trees -------------------------------------------------------------


def test_deepcopy_and_copy_node_keep_marks() -> None:
    spec = load_text(SPEC, "s.yaml")
    for clone in (copy.deepcopy(spec), copy_node(spec)):
        assert clone == spec
        layer = clone["model"]["layers"][0]
        assert layer is not spec["model"]["layers"][0]
        assert layer.value_marks["filters"] == at(7, 31)
        assert clone["model"]["layers"].item_marks == [at(7, 7), at(8, 7)]
        assert locate(clone, ("train", "lr")) == at(3, 7)
    shallow = copy.copy(spec)
    shallow.key_marks["extra"] = at(1, 1)
    assert "extra" not in spec.key_marks


def test_mapping_helper_takes_marks_from_node_values() -> None:
    spec = load_text(SPEC, "s.yaml")
    merged = mapping(
        {"train": spec["train"], "n": 3},
        mark=at(1, 1),
        key_marks={"n": at(5, 5)},
        value_marks={"n": at(5, 8)},
    )
    assert merged.value_marks == {"train": at(3, 3), "n": at(5, 8)}
    assert locate(merged, ("train", "lr")) == at(3, 7)
    assert key_mark(merged, ("n",)) == at(5, 5)


# --- files ---------------------------------------------------------------------------------


def test_load_file_marks_carry_the_path(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC, encoding="utf-8")
    spec = load_file(path)
    assert spec.value_marks["name"] == Mark(str(path), 1, 7)


def test_load_file_source_line_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes("\ufeffname: x\nname: y\n".encode())
    problem = file_problem(path)
    assert problem.mark == Mark(str(path), 2, 1)
    assert problem.source_line == "name: y"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    problem = file_problem(path)
    assert problem.code == "file-not-found"
    assert str(path) in problem.message


def test_directory_is_unreadable(tmp_path: Path) -> None:
    problem = file_problem(tmp_path)
    assert str(tmp_path) in problem.message


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: x\nnote: caf\u00e9\n".encode("latin-1"))
    problem = file_problem(path)
    assert problem.code == "encoding"
    assert str(path) in problem.message
    assert problem.mark == Mark(str(path), 2, 10)

"""Shared helpers: specs written inline as YAML, the way users write them."""

from __future__ import annotations

import textwrap
from collections.abc import Callable

import pytest

from pipeline.spec.load import load_spec_text
from pipeline.spec.spec import Spec

MakeSpec = Callable[..., Spec]


def make_spec(
    layers: str,
    input_shape: list[int],
    *,
    data: str = "{dataset: mnist}",
    extra: str = "",
    defaults: str = "",
    check: bool = True,
    name: str = "t",
) -> Spec:
    """A spec whose ``model.layers`` is the YAML list ``layers`` (one ``- {...}`` per line);
    ``extra`` adds top-level sections, ``defaults`` the model's per-kind defaults mapping."""
    text = (
        f"name: {name}\ndata: {data}\n{textwrap.dedent(extra)}\nmodel:\n"
        f"  input_shape: {input_shape}\n"
        + (f"  defaults: {defaults}\n" if defaults else "")
        + "  layers:\n"
        + textwrap.indent(textwrap.dedent(layers).strip(), "    ")
    )
    return load_spec_text(text, check=check)


@pytest.fixture
def spec_of() -> MakeSpec:
    return make_spec

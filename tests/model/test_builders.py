"""Builder tables keyed by schema class: dispatch by class, and a kind without a builder fails
when the table is checked (at import of the module that completes it), naming the kind."""

from __future__ import annotations

import subprocess
import sys
from typing import Literal

import pytest

from pipeline.model.activations import ACTIVATION_BUILDERS
from pipeline.model.init import INITIALIZER_BUILDERS
from pipeline.model.registry import LAYER_BUILDERS
from pipeline.registry import Builders
from pipeline.spec.base import Kind, Kinds
from pipeline.train.optim import OPTIMIZER_BUILDERS
from pipeline.train.schedules import SCHEDULE_BUILDERS


def _widgets() -> tuple[Kinds, type[Kind], type[Kind]]:
    kinds = Kinds("widget")

    @kinds.register
    class Knob(Kind):
        type: Literal["knob"] = "knob"

    @kinds.register
    class Lever(Kind):
        type: Literal["lever"] = "lever"

    return kinds, Knob, Lever


def test_a_kind_registered_without_a_builder_makes_check_complete_name_it():
    kinds, knob, _ = _widgets()
    table: Builders = Builders(kinds, "widget")
    table.register(knob)(lambda w: "knob built")
    assert table.missing() == ["lever"]
    with pytest.raises(TypeError, match=r"widget kinds Lever \(lever\)"):
        table.check_complete()


def test_a_table_dispatches_by_the_schema_class_of_the_object():
    kinds, knob, lever = _widgets()
    table: Builders = Builders(kinds, "widget")
    table.register(knob)(lambda w: "knob built")
    table.register(lever)(lambda w: "lever built")
    table.check_complete()
    assert table[lever()](None) == "lever built" and table[knob](None) == "knob built"
    assert set(table) == {knob, lever} and lever() in table


def test_registering_twice_or_outside_the_kinds_is_refused():
    kinds, knob, _ = _widgets()
    _, stray, _ = _widgets()
    table: Builders = Builders(kinds, "widget")
    table.register(knob)(lambda w: None)
    with pytest.raises(TypeError, match="registered twice"):
        table.register(knob)(lambda w: None)
    with pytest.raises(TypeError, match="not a registered widget kind"):
        table.register(stray)(lambda w: None)


def test_a_kind_expanded_on_load_needs_no_builder():
    kinds, knob, lever = _widgets()
    lever.expanded_on_load = True
    table: Builders = Builders(kinds, "widget")
    table.register(knob)(lambda w: None)
    table.check_complete()
    with pytest.raises(TypeError, match="no widget builder for Lever"):
        table[lever]


@pytest.mark.parametrize(
    "table",
    [
        LAYER_BUILDERS,
        ACTIVATION_BUILDERS,
        INITIALIZER_BUILDERS,
        OPTIMIZER_BUILDERS,
        SCHEDULE_BUILDERS,
    ],
    ids=lambda t: t.what,
)
def test_every_spec_kind_has_a_builder(table):
    assert table.missing() == []


def test_a_layer_kind_without_a_builder_fails_the_import_of_pipeline_model():
    code = (
        "from typing import Literal\n"
        "import pipeline.spec.spec\n"
        "from pipeline.spec.base import LAYERS\n"
        "from pipeline.spec.layers import LayerBase\n"
        "@LAYERS.register\n"
        "class Wobble(LayerBase):\n"
        "    type: Literal['wobble'] = 'wobble'\n"
        "import pipeline.model\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode != 0
    assert "TypeError: no layer builder for the spec's layer kinds Wobble (wobble)" in run.stderr

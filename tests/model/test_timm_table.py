"""The timm table validation reads is what timm's models measure."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.model.timm_table import entry
from pipeline.spec import timm_table
from pipeline.spec.timm_table import TableError, read_table


def test_an_entry_measured_again_is_the_table_s():
    # shapes, smallest input, blocks, stages, sizes, pretrained_cfg: nothing went stale
    table = read_table(Path(timm_table.__file__).with_name("timm_archs.json"))
    assert entry("test_efficientnet") == table["archs"]["test_efficientnet"]


def test_an_architecture_with_a_fixed_input_size_is_refused_by_name():
    with pytest.raises(TableError, match="timm/test_vit: no stride rule"):
        entry("test_vit")

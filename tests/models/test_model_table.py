"""model_table.json, which `reslab models` reads, matches what measuring every network gives now."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from reslab.models import list_models
from reslab.models.complexity import MODEL_TABLE, describe, measure

TABLE = {row["name"]: row for row in json.loads(MODEL_TABLE.read_text())}


def test_the_table_lists_every_registered_network() -> None:
    assert list(TABLE) == list_models()


@pytest.mark.parametrize("name", list_models())
def test_each_row_is_what_measuring_gives(name: str) -> None:
    """If this fails, the table is stale: rewrite it with reslab.models.complexity.write_model_table()."""
    assert asdict(measure(name)) == TABLE[name]


def test_other_settings_and_parametric_names_are_measured() -> None:
    assert (
        describe("resnet20", num_classes=100).params == TABLE["resnet20"]["params"] + 65 * 90
    )  # 64 weights + a bias per class
    assert describe("wrn_22_8").params > 0 and "wrn_22_8" not in TABLE

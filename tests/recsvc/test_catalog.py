"""The catalog: metadata aligned to a model's items, availability, categories and overrides."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pytest
from planting import Planted

from recsvc.catalog import Catalog, Display, ItemInfo
from recsvc.idmap import IdMap
from recsvc.schema import ITEM_SCHEMA

IDS = IdMap(["a", "b", "c", "d"])


def table() -> pa.Table:
    """Describes a, b (unavailable), c (availability unknown) and x (not in the model); not d."""
    return pa.Table.from_pylist(
        [
            {"item_id": "a", "title": "A", "category": "shoes", "price": 10.0, "available": True},
            {"item_id": "b", "title": "B", "category": "hats", "price": 5.0, "available": False},
            {"item_id": "c", "title": "C", "category": "shoes", "available": None, "url": "https://c"},
            {"item_id": "x", "title": "X", "category": "shoes", "price": 1.0, "available": True},
        ],
        schema=ITEM_SCHEMA,
    )


def test_a_catalog_aligns_the_table_to_the_models_items() -> None:
    catalog = Catalog(IDS, table())

    assert catalog.available.tolist() == [True, False, True, True]  # null and undescribed: available
    assert not catalog.available.flags.writeable
    assert catalog.categories == ["hats", "shoes"]
    assert catalog.category_items("shoes").tolist() == [0, 2] and catalog.category_items("hats").tolist() == [
        1
    ]
    assert catalog.category_items("none").tolist() == []
    assert catalog.display([2, 3, 0]) == [
        Display("C", "shoes", None, "https://c", None),
        Display(),
        Display("A", "shoes", 10.0, None, None),
    ]
    assert catalog.info("b") == ItemInfo("B", "hats", 5.0, False)
    assert catalog.info("x") == ItemInfo("X", "shoes", 1.0, True)  # known, though never recommendable
    assert catalog.info("nope") is None and catalog.version is None


def test_a_catalog_without_a_table_makes_every_item_available() -> None:
    catalog = Catalog(IDS)

    assert catalog.available.all() and catalog.categories == []
    assert catalog.info_at(1) == ItemInfo()


def test_overrides_change_availability_metadata_and_categories() -> None:
    base = Catalog(IDS, table())
    view = base.with_overrides(
        3,
        {
            "a": {"available": False, "price": 12},
            "b": {"available": True, "category": "shoes", "title": "B2"},
            "d": {"category": "socks"},
            "new": {"title": "New", "price": 3.5},
        },
    )

    assert view.version == 3 and view.available.tolist() == [False, True, True, True]
    assert view.category_items("shoes").tolist() == [0, 1, 2]
    assert view.category_items("hats").tolist() == [] and view.category_items("socks").tolist() == [3]
    assert view.info("a") == ItemInfo("A", "shoes", 12.0, False)
    assert view.display([1]) == [Display("B2", "shoes", 5.0, None, None)]
    assert view.info("new") == ItemInfo(title="New", price=3.5)  # metadata only: not a model item
    assert view.info("x") == ItemInfo("X", "shoes", 1.0, True)
    # the base is untouched
    assert base.available.tolist() == [True, False, True, True] and base.info("a") == ItemInfo(
        "A", "shoes", 10.0
    )
    assert base.category_items("hats").tolist() == [1]


def test_views_are_cached_by_version_and_always_start_from_the_artifacts_catalog() -> None:
    base = Catalog(IDS, table())
    first = base.with_overrides(1, {"a": {"available": False}})

    assert base.with_overrides(1, {"b": {"available": True}}) is first  # same version: no work
    second = first.with_overrides(2, {"b": {"available": True}})  # not stacked on `first`
    assert second is not first and second.available.tolist() == [True, True, True, True]
    assert base.with_overrides(2, {}) is second
    assert base.with_overrides(1, {}) is not first  # only the last view is kept
    unchanged = base.with_overrides(4, {"a": {"title": "A"}})  # no real change: groups are shared
    assert unchanged.category_items("shoes") is base.category_items("shoes")


def test_null_and_ill_typed_override_values_keep_the_catalogs(caplog: pytest.LogCaptureFixture) -> None:
    base = Catalog(IDS, table())
    with caplog.at_level(logging.WARNING, logger="recsvc.catalog"):
        view = base.with_overrides(
            1, {"a": {"title": None, "price": "cheap", "available": "no", "colour": "red", "url": 5}}
        )

    assert view.info("a") == base.info("a")
    assert view.available[0]
    assert sum("ignoring" in record.message for record in caplog.records) == 3  # price, available, url


def test_the_planted_models_catalog(planted_model: Planted) -> None:
    artifact = planted_model.artifact
    catalog = Catalog(artifact.item_ids, artifact.items)

    in_a = {artifact.item_ids.id_at(int(i)) for i in catalog.category_items("A")}
    assert in_a == planted_model.block("A") and catalog.available.all()
    assert catalog.info("catalog-only") is not None and "catalog-only" not in artifact.item_ids
    shared = artifact.item_ids.index_of("shared")
    assert shared is not None and catalog.info_at(shared).category is None
    assert np.count_nonzero(catalog.available) == len(artifact.item_ids)

"""Item metadata aligned to a model's dense item index, with the catalog overrides from Redis.

A `Catalog` is built once per model version from the artifact's `items` table (which may be
absent, or describe only some of the model's items, or more). It answers what the engine asks
on every request: which model items may be recommended (`available`, a numpy mask), which items
belong to a category (sorted dense indices), and the display fields of the few items returned.

Items the table does not describe are available and have no metadata; a null `available`
counts as available. Items outside the model can never be recommended (they have no vectors)
but keep their metadata, so `info` can still describe them.

Overrides (`PUT /v1/items`, kept in Redis) change often and arrive as one whole dict with a
version number. `with_overrides` returns a view with them applied and keeps the last view per
base catalog, so a server pays for applying a change once (a copy of the availability mask and,
when a category moved, a regrouping), not per request. A field whose override value is None or
of the wrong type keeps the catalog's value ("absent fields keep their value").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from recsvc.idmap import IdMap

log = logging.getLogger(__name__)

Overrides = Mapping[str, Mapping[str, Any]]


class Display(NamedTuple):
    """The fields a client shows for an item; a tuple, so thousands per batch stay cheap."""

    title: str | None = None
    category: str | None = None
    price: float | None = None
    url: str | None = None
    image_url: str | None = None


@dataclass(frozen=True)
class ItemInfo:
    """Everything the catalog knows about one item."""

    title: str | None = None
    category: str | None = None
    price: float | None = None
    available: bool = True
    url: str | None = None
    image_url: str | None = None

    @classmethod
    def of(cls, display: Display, available: bool) -> ItemInfo:
        return cls(display.title, display.category, display.price, available, display.url, display.image_url)


_TEXT_FIELDS = ("title", "category", "url", "image_url")
FIELDS = (*Display._fields, "available")
_BLANK = Display()
_NONE: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
_NONE.flags.writeable = False


class Catalog:
    """Metadata and availability of a model's items; immutable, so views share what they can."""

    def __init__(self, item_ids: IdMap, items: pa.Table | None = None) -> None:
        self.item_ids = item_ids
        self.version: int | None = None  # of the overrides applied; None: the artifact's catalog
        self._rows: list[Display] = [_BLANK] * len(item_ids)
        self._outside: dict[str, ItemInfo] = {}  # described by the table, not in the model
        self._overrides: dict[str, dict[str, Any]] = {}
        self._patched: dict[int, Display] = {}  # model items whose display fields are overridden
        available = np.ones(len(item_ids), dtype=bool)
        if items is not None:
            self._read_table(items, available)
        self._base = self
        self._last_view: tuple[int, Catalog] | None = None
        self._set(available, _group([row.category for row in self._rows]))

    @property
    def available(self) -> npt.NDArray[np.bool_]:
        """Per model item: may it be recommended (read-only)."""
        return self._available

    @property
    def categories(self) -> list[str]:
        """Every category some model item belongs to, sorted."""
        return sorted(self._members)

    def category_items(self, category: str) -> npt.NDArray[np.int64]:
        """Dense indices (ascending, read-only) of the model items in `category`; empty if none."""
        return self._members.get(category, _NONE)

    def display(self, indices: Sequence[int]) -> list[Display]:
        """Display fields of model items by dense index, overrides applied."""
        rows, patched = self._rows, self._patched.get
        return [patched(index) or rows[index] for index in indices]

    def info_at(self, index: int) -> ItemInfo:
        """Everything known about the model item at a dense index, overrides applied."""
        return ItemInfo.of(self.display([index])[0], bool(self._available[index]))

    def info(self, item_id: str) -> ItemInfo | None:
        """Metadata of any item the model, the table or an override knows; None otherwise."""
        index = self.item_ids.index_of(item_id)
        if index is not None:
            return self.info_at(index)
        known, override = self._outside.get(item_id), self._overrides.get(item_id)
        if known is None and override is None:
            return None
        return ItemInfo(**{**vars(known or ItemInfo()), **(override or {})})

    def with_overrides(self, version: int, overrides: Overrides) -> Catalog:
        """This model's catalog with `overrides` (the whole current set) applied.

        Views are cached by `version`: asking again with the version of the last view returns
        that view without looking at `overrides`, so callers bump the version on every change.
        Overrides always apply to the artifact's catalog, never on top of another view.
        """
        base = self._base
        last = base._last_view
        if last is not None and last[0] == version:
            return last[1]
        view = base._view(version, overrides)
        base._last_view = (version, view)  # one assignment: concurrent callers at worst both build
        return view

    def _view(self, version: int, overrides: Overrides) -> Catalog:
        view = object.__new__(Catalog)
        view.item_ids, view.version, view._base, view._last_view = self.item_ids, version, self, None
        view._rows, view._outside = self._rows, self._outside
        view._overrides = {item_id: _clean(item_id, fields) for item_id, fields in overrides.items()}
        view._patched = {}
        available = self._available.copy()
        moved = False
        for item_id, fields in view._overrides.items():
            index = self.item_ids.index_of(item_id)
            if index is None:
                continue
            available[index] = fields.get("available", available[index])
            row = self._rows[index]
            patched = row._replace(**{name: value for name, value in fields.items() if name != "available"})
            if patched != row:
                view._patched[index] = patched
                moved |= patched.category != row.category
        members = self._members
        if moved:  # regroup only when a category really changed
            members = _group([row.category for row in view.display(range(len(self._rows)))])
        view._set(available, members)
        return view

    def _read_table(self, items: pa.Table, available: npt.NDArray[np.bool_]) -> None:
        """Fill the rows of model items from the table (last row wins); keep the others aside."""
        records = items.to_pylist()
        positions = self.item_ids.indices_of([record["item_id"] for record in records])
        for record, index in zip(records, positions.tolist(), strict=True):
            display = Display(*(record.get(name) for name in Display._fields))
            is_available = record.get("available") is not False
            if index < 0:
                self._outside[record["item_id"]] = ItemInfo.of(display, is_available)
            else:
                self._rows[index] = display
                available[index] = is_available

    def _set(self, available: npt.NDArray[np.bool_], members: dict[str, npt.NDArray[np.int64]]) -> None:
        available.flags.writeable = False
        self._available = available
        self._members = members


def _group(categories: list[str | None]) -> dict[str, npt.NDArray[np.int64]]:
    """Category name -> ascending dense indices of its items."""
    names = sorted({name for name in categories if name is not None})
    code_of: dict[str | None, int] = {name: code for code, name in enumerate(names)}
    codes = np.fromiter((code_of.get(name, -1) for name in categories), dtype=np.int64, count=len(categories))
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    members: dict[str, npt.NDArray[np.int64]] = {}
    for code, name in enumerate(names):
        indices = order[bounds[code] : bounds[code + 1]]
        indices.flags.writeable = False
        members[name] = indices
    return members


def _clean(item_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The usable fields of one override: known names, non-null values of the right type."""
    cleaned: dict[str, Any] = {}
    for name, value in fields.items():
        if name not in FIELDS or value is None:
            continue
        if name == "available" and isinstance(value, bool):
            cleaned[name] = value
        elif name == "price" and isinstance(value, int | float) and not isinstance(value, bool):
            cleaned[name] = float(value)
        elif name in _TEXT_FIELDS and isinstance(value, str):
            cleaned[name] = value
        else:
            log.warning("catalog override of %r: ignoring %s=%r (wrong type)", item_id, name, value)
    return cleaned

"""Maps between external string ids and the dense integer rows of a model's factor matrices.

The ids live in one numpy unicode array (row order = dense index), which is what artifacts store
with `np.save(..., allow_pickle=False)`. The reverse dict is built only on the first lookup: a
process that only walks rows never pays for it, and one that looks ids up pays once (about 0.3 s
per million ids). Note that numpy unicode arrays are fixed width (4 bytes x the longest id per
row), so one very long id makes the whole array wide.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat

import numpy as np
import numpy.typing as npt


class IdMap:
    """External ids <-> dense indices 0..n-1; immutable once built."""

    def __init__(self, ids: npt.NDArray[np.str_] | Sequence[str]) -> None:
        array = _as_unicode_array(ids)
        listed = array.tolist()
        if len(set(listed)) != len(listed):
            raise ValueError(f"duplicate ids, e.g. {_first_duplicate(listed)!r}")
        self._ids = array
        self._index: dict[str, int] | None = None

    @property
    def ids(self) -> npt.NDArray[np.str_]:
        """The ids in dense-index order (a read-only numpy unicode array)."""
        return self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, external_id: object) -> bool:
        return external_id in self._lookup()

    def __repr__(self) -> str:
        return f"IdMap({len(self)} ids)"

    def index_of(self, external_id: str) -> int | None:
        """The dense index of one id, or None when the id is unknown."""
        return self._lookup().get(external_id)

    def indices_of(self, external_ids: Sequence[str] | npt.NDArray[np.str_]) -> npt.NDArray[np.int64]:
        """Dense indices of many ids, -1 where an id is unknown."""
        listed = external_ids.tolist() if isinstance(external_ids, np.ndarray) else external_ids
        get = self._lookup().get
        return np.fromiter(map(get, listed, repeat(-1)), dtype=np.int64, count=len(listed))

    def id_at(self, index: int) -> str:
        """The external id at a dense index; negative indices are rejected (-1 means unknown)."""
        if index < 0:
            raise IndexError(f"dense index must be >= 0, got {index}")
        return str(self._ids[index])

    def _lookup(self) -> dict[str, int]:
        # Two threads may both build it on first use; they build equal dicts, so either wins.
        if self._index is None:
            self._index = dict(zip(self._ids.tolist(), range(len(self._ids)), strict=True))
        return self._index


def _as_unicode_array(ids: npt.NDArray[np.str_] | Sequence[str]) -> npt.NDArray[np.str_]:
    if isinstance(ids, np.ndarray) and ids.dtype.kind == "U":
        array = ids.view()  # a view, so marking it read-only leaves the caller's array alone
    elif isinstance(ids, str):
        raise TypeError("ids must be a sequence of strings, not one string")
    else:
        listed = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        bad = next((value for value in listed if not isinstance(value, str)), None)
        if bad is not None:
            raise TypeError(f"ids must be strings, got {type(bad).__name__}: {bad!r}")
        array = np.array(listed, dtype=np.str_) if listed else np.empty(0, dtype="<U1")
    if array.ndim != 1:
        raise ValueError(f"ids must be one-dimensional, got shape {array.shape}")
    array.flags.writeable = False
    return array


def _first_duplicate(ids: list[str]) -> str:
    seen: set[str] = set()
    for value in ids:
        if value in seen:
            return value
        seen.add(value)
    raise AssertionError("no duplicate")  # only called after a duplicate was found

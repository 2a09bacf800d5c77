"""The campaign `make run` creates renders for any data `make run EVENTS=...` may bring."""

from __future__ import annotations

from pathlib import Path

import pytest
from shop import REPO

from notifier.cli import read_campaign_file
from notifier.templates import Templates, context
from recsvc.engine import Recommendation

DEMO = REPO / "configs" / "campaigns" / "demo.toml"


@pytest.mark.parametrize(
    ("category", "price", "body"),
    [
        ("shoes", 19.9, "New in shoes from 19.90. Tap to see your picks."),
        ("Drama", None, "New in Drama. Tap to see your picks."),  # MovieLens: no prices
        (None, None, "New. Tap to see your picks."),
    ],
)
def test_the_demo_campaign_renders_items_with_and_without_price_or_category(
    category: str | None, price: float | None, body: str
) -> None:
    _, spec = read_campaign_file(Path(DEMO))
    items = [Recommendation(f"i{n}", 1.0, f"Item {n}", category, price, None, None) for n in range(3)]
    rendered = Templates().compile(spec.content).render(context("u1", {}, items, "demo", spec.name))
    assert (rendered.title, rendered.body) == ("Item 0 and 2 more for you", body)

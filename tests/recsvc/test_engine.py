"""The engine on a real model of planted data: fold-in, strategies, filters, batching."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from planting import Planted
from threadpoolctl import threadpool_limits

from recsvc.artifact import ModelArtifact
from recsvc.engine import Engine, RecentEvent, Recommendations
from recsvc.errors import InputError, NotFoundError
from recsvc.foldin import FoldIn
from recsvc.idmap import IdMap

HOUR_US = 3_600_000_000


@pytest.fixture(scope="module")
def engine(planted_model: Planted) -> Engine:
    return Engine(planted_model.artifact, "v000001", planted_model.settings)


def ids(recommendations: Recommendations | list[object]) -> list[str]:
    items = recommendations.items if isinstance(recommendations, Recommendations) else recommendations
    return [item.item_id for item in items]


def views(now_us: int, items: list[str], kind: str = "view", hours_ago: int = 1) -> list[RecentEvent]:
    return [RecentEvent(item, kind, now_us - hours_ago * HOUR_US) for item in items]


def row_of(artifact: ModelArtifact, name: str, user: str) -> set[str]:
    matrix = getattr(artifact, name)
    index = artifact.user_ids.index_of(user)
    assert matrix is not None and index is not None
    return {artifact.item_ids.id_at(int(i)) for i in matrix[index].indices}


def buyer(artifact: ModelArtifact, group: str) -> str:
    """A user of the group who bought at least two items in the training data."""
    for n in range(100):
        user = f"{group}{n}"
        if len(row_of(artifact, "user_excluded", user)) >= 2:
            return user
    raise AssertionError("the planted data has no buyer")


# --- fold-in -----------------------------------------------------------------------------------


def test_fold_in_reproduces_implicits_recalculate_user(planted_model: Planted, engine: Engine) -> None:
    artifact, now = planted_model.artifact, planted_model.now_us
    recent = [
        RecentEvent("B1", "view", now - 24 * HOUR_US),  # one day old: decayed
        RecentEvent("B2", "purchase", now),
        RecentEvent("A1", "add_to_cart", now - 2 * HOUR_US),
        RecentEvent("A1", "view", now),  # summed with the add_to_cart
        RecentEvent("B3", "dismiss", now),  # weighs nothing
    ]
    vector, strategy = engine.user_vector("a3", recent, now)

    half_life = planted_model.settings.serving.recent_half_life_days
    weights = artifact.user_items[artifact.user_ids.index_of("a3")].toarray()[0]
    for item, weight, hours in (("B1", 1.0, 24), ("B2", 8.0, 0), ("A1", 4.0, 2), ("A1", 1.0, 0)):
        weights[artifact.item_ids.index_of(item)] += weight * 0.5 ** (hours / 24 / half_life)
    parameters = artifact.manifest["parameters"]
    model = AlternatingLeastSquares(
        factors=parameters["factors"], regularization=parameters["regularization"], alpha=parameters["alpha"]
    )
    model.item_factors = np.array(artifact.item_factors)
    expected = model.recalculate_user(0, sp.csr_matrix(weights[None, :].astype(np.float32)))

    assert strategy == "realtime" and vector is not None
    np.testing.assert_allclose(vector, expected, rtol=1e-4, atol=1e-5)


def test_fold_in_of_training_rows_matches_a_fitted_model() -> None:
    rng = np.random.default_rng(0)
    matrix = sp.random(200, 60, density=0.1, format="csr", dtype=np.float32, random_state=1)
    matrix.data = rng.integers(1, 5, matrix.nnz).astype(np.float32)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=8, regularization=0.1, alpha=2.0, iterations=30, random_state=0
        )
        model.fit(matrix, show_progress=False)
    fold_in = FoldIn(model.item_factors, regularization=0.1, alpha=2.0)

    folded = fold_in.solve(matrix.indptr, matrix.indices, matrix.data)

    np.testing.assert_allclose(folded, model.recalculate_user(np.arange(200), matrix), atol=1e-5)
    # the fitted factors were solved against the previous sweep's items: close, not equal
    np.testing.assert_allclose(folded, model.user_factors, atol=0.05)
    assert not folded[np.diff(matrix.indptr) == 0].any()  # users without items get zeros


def test_a_known_user_without_new_events_keeps_the_stored_vector(
    planted_model: Planted, engine: Engine
) -> None:
    artifact, now = planted_model.artifact, planted_model.now_us
    stored = artifact.user_factors[artifact.user_ids.index_of("a3")]

    vector, strategy = engine.user_vector("a3", [], now)
    assert strategy == "personalized" and vector is not None
    np.testing.assert_array_equal(vector, stored)

    # events up to the newest training event are in user_items already: no fold-in, no double count
    old = views(now, ["B1", "B2"], hours_ago=24 * 10)
    vector, strategy = engine.user_vector("a3", old, now)
    assert strategy == "personalized" and vector is not None
    np.testing.assert_array_equal(vector, stored)
    assert not set(ids(engine.recommend("a3", k=40, recent=old, now_us=now))) & {"B1", "B2"}  # seen, though


def test_unknown_users_fold_in_or_fall_back_to_popular(planted_model: Planted, engine: Engine) -> None:
    now = planted_model.now_us
    assert engine.user_vector("nobody", [], now) == (None, "popular")
    assert engine.user_vector("nobody", views(now, ["no-such-item"]), now) == (None, "popular")
    assert engine.user_vector("nobody", views(now, ["B1"], "dismiss"), now) == (None, "popular")
    vector, strategy = engine.user_vector("nobody", views(now, ["B1", "B2"]), now)
    assert strategy == "realtime" and vector is not None and vector.shape == (4,)


# --- strategies --------------------------------------------------------------------------------


def test_known_users_recommendations_come_from_their_block(planted_model: Planted, engine: Engine) -> None:
    users = [f"{group}{n}" for group in "ab" for n in range(100)]
    results = engine.recommend_many(users, k=5, now_us=planted_model.now_us)

    own = [
        len(set(ids(result)) & planted_model.block(user[0].upper()))
        for user, result in zip(users, results, strict=True)
    ]
    assert sum(own) >= 0.98 * 5 * len(users), own
    for result in results:
        assert result.strategy == "personalized" and result.known_user and result.model_version == "v000001"
        scores = [item.score for item in result.items]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)


def test_an_unknown_user_with_recent_block_b_events_gets_block_b(
    planted_model: Planted, engine: Engine
) -> None:
    now = planted_model.now_us
    result = engine.recommend("visitor-1", k=5, recent=views(now, ["B1", "B4", "B9", "B13"]), now_us=now)

    assert result.strategy == "realtime" and not result.known_user
    # "shared" is liked by everyone, so it may join the block
    assert set(ids(result)) <= planted_model.block("B") - {"B1", "B4", "B9", "B13"} | {"shared"}


def test_a_block_a_user_turning_to_block_b_sees_block_b_rise(planted_model: Planted, engine: Engine) -> None:
    now = planted_model.now_us
    before = engine.recommend("a3", k=10, now_us=now)
    turning = views(now, [f"B{n}" for n in range(8)]) + views(now, ["B2", "B5"], "purchase")

    after = engine.recommend("a3", k=10, recent=turning, now_us=now)

    in_b = planted_model.block("B")
    assert after.strategy == "realtime" and after.known_user
    assert len(set(ids(before)) & in_b) <= 3 < len(set(ids(after)) & in_b)
    assert set(ids(after)[:3]) <= in_b - {f"B{n}" for n in range(8)}


def test_an_unknown_user_gets_trending_first_then_popularity(planted_model: Planted, engine: Engine) -> None:
    artifact = planted_model.artifact
    trending = [("B3", 5.0), ("A1", 9.0), ("not-in-model", 100.0), ("B3", 1.0)]

    result = engine.recommend("nobody", k=6, trending=trending, now_us=planted_model.now_us)

    by_popularity = [artifact.item_ids.id_at(int(i)) for i in np.argsort(-artifact.popularity, kind="stable")]
    rest = [item for item in by_popularity if item not in ("A1", "B3")]
    assert result.strategy == "popular" and not result.known_user
    assert ids(result) == ["A1", "B3", *rest[:4]]
    assert [item.score for item in result.items[:2]] == [9.0, 5.0]
    assert ids(engine.popular(k=3)) == by_popularity[:3]


def test_popular_applies_the_same_filters(planted_model: Planted, engine: Engine) -> None:
    now = planted_model.now_us
    top = ids(engine.popular(k=4))
    recent = [RecentEvent(top[0], "view", now), RecentEvent(top[1], "purchase", now)]

    result = engine.recommend("nobody", k=4, excluded=[top[2]], exclude=[top[3]], now_us=now)
    assert result.strategy == "popular" and not set(ids(result)) & set(top[2:])
    unseen = engine.recommend("visitor", k=40, recent=recent, now_us=now)
    seen = engine.recommend("visitor", k=40, recent=recent, include_seen=True, now_us=now)
    assert unseen.strategy == "realtime" and not set(ids(unseen)) & set(top[:2])
    assert top[0] in ids(seen) and top[1] not in ids(seen)  # viewed may return, bought never
    assert set(ids(engine.popular(k=40, category="B"))) == planted_model.block("B")


# --- filters -----------------------------------------------------------------------------------


def test_bought_and_dismissed_items_never_return(planted_model: Planted, engine: Engine) -> None:
    artifact, now = planted_model.artifact, planted_model.now_us
    user = buyer(artifact, "a")
    bought = row_of(artifact, "user_excluded", user)
    liked = [item for item in sorted(planted_model.block("A")) if item not in bought]
    recent = views(now, [liked[0]], "purchase") + views(now, [liked[1]], "dismiss")

    for include_seen in (False, True):
        result = engine.recommend(
            user, k=50, recent=recent, excluded=[liked[2]], include_seen=include_seen, now_us=now
        )
        returned = set(ids(result))
        assert not returned & (bought | {liked[0], liked[1], liked[2]})
        assert len(returned) == len(ids(result))  # no duplicates


def test_include_seen_toggles_viewed_items(planted_model: Planted, engine: Engine) -> None:
    artifact, now = planted_model.artifact, planted_model.now_us
    user = buyer(artifact, "b")
    viewed = row_of(artifact, "user_items", user) - row_of(artifact, "user_excluded", user)
    recent_view = next(item for item in sorted(planted_model.block("B")) if item not in viewed)

    hidden = engine.recommend(user, k=50, recent=views(now, [recent_view]), now_us=now)
    shown = engine.recommend(user, k=50, recent=views(now, [recent_view]), include_seen=True, now_us=now)

    assert not set(ids(hidden)) & (viewed | {recent_view})
    assert viewed | {recent_view} <= set(ids(shown))
    top = set(ids(engine.recommend(user, k=5, include_seen=True, now_us=now)))
    assert top & viewed  # what they liked ranks high when allowed


def test_category_restricts_and_scores_exactly(planted_model: Planted, engine: Engine) -> None:
    now = planted_model.now_us
    across = engine.recommend("a3", k=3, category="B", now_us=now)
    assert across.strategy == "personalized" and len(across.items) == 3
    assert set(ids(across)) <= planted_model.block("B")
    assert all(item.category == "B" for item in across.items)

    vector, _ = engine.user_vector("a3", [], now)
    artifact = planted_model.artifact
    in_b = np.array(sorted(artifact.item_ids.index_of(item) for item in planted_model.block("B")))
    scores = artifact.item_factors[in_b] @ vector
    best = [artifact.item_ids.id_at(int(i)) for i in in_b[np.argsort(-scores)][:3]]
    assert ids(across) == best
    assert engine.recommend("a3", k=3, category="no-such", now_us=now).items == []
    assert engine.recommend("nobody", k=3, category="no-such", now_us=now).items == []


def test_exclude_removes_items_for_this_request(planted_model: Planted, engine: Engine) -> None:
    now = planted_model.now_us
    first = ids(engine.recommend("b7", k=5, now_us=now))

    again = ids(engine.recommend("b7", k=5, exclude=first[:2], now_us=now))

    assert not set(again) & set(first[:2]) and again[:3] == first[2:]


def test_overrides_hide_unavailable_items_and_change_metadata(planted_model: Planted, engine: Engine) -> None:
    now = planted_model.now_us
    first = ids(engine.recommend("a3", k=5, now_us=now))
    overrides = {
        first[0]: {"available": False},
        first[1]: {"title": "Renamed", "price": 1.5},
        "brand-new": {"title": "Not in the model", "available": True},
    }
    catalog = engine.catalog.with_overrides(7, overrides)

    result = engine.recommend("a3", k=5, catalog=catalog, now_us=now)

    assert first[0] not in ids(result) and ids(result)[0] == first[1]
    assert (result.items[0].title, result.items[0].price) == ("Renamed", 1.5)
    assert "brand-new" not in ids(engine.recommend("nobody", k=50, catalog=catalog, now_us=now))
    assert first[0] not in ids(engine.similar(first[2], k=50, catalog=catalog))
    assert first[0] not in ids(engine.popular(k=50, catalog=catalog))
    assert engine.catalog.with_overrides(7, {}) is catalog  # one apply per version
    assert ids(engine.recommend("a3", k=5, now_us=now)) == first  # the base catalog is unchanged


def test_a_catalog_of_another_model_is_refused(planted_model: Planted, engine: Engine) -> None:
    artifact = planted_model.artifact
    retrained = replace(artifact, item_ids=IdMap(artifact.item_ids.ids))  # same ids, another version
    other = Engine(retrained, "v000002", planted_model.settings)
    with pytest.raises(ValueError, match="another model version"):
        engine.recommend("a3", k=3, catalog=other.catalog, now_us=planted_model.now_us)


def test_k_larger_than_the_catalog_returns_what_exists(planted_model: Planted, engine: Engine) -> None:
    artifact, now = planted_model.artifact, planted_model.now_us
    everything = len(artifact.item_ids)

    known = engine.recommend("a3", k=1000, now_us=now)
    seen = row_of(artifact, "user_items", "a3") | row_of(artifact, "user_excluded", "a3")
    assert sorted(ids(known)) == sorted(set(artifact.item_ids.ids.tolist()) - seen)
    assert len(ids(engine.recommend("a3", k=1000, include_seen=True, now_us=now))) == everything - len(
        row_of(artifact, "user_excluded", "a3")
    )
    assert len(ids(engine.recommend("nobody", k=1000, now_us=now))) == everything
    assert len(ids(engine.similar("A1", k=1000))) == everything - 1
    with pytest.raises(InputError):
        engine.recommend("a3", k=0, now_us=now)


# --- similar items -----------------------------------------------------------------------------


def test_similar_items_come_from_the_same_block(planted_model: Planted, engine: Engine) -> None:
    for item, group in (("A3", "A"), ("B11", "B")):
        similar = engine.similar(item, k=5)
        assert set(ids(similar)) <= planted_model.block(group) - {item}
        scores = [entry.score for entry in similar]
        assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 + 1e-6 for s in scores)
    in_b = engine.similar("A3", k=3, category="B")
    assert len(in_b) == 3 and set(ids(in_b)) <= planted_model.block("B")
    with pytest.raises(NotFoundError) as caught:
        engine.similar("catalog-only", k=5)
    assert caught.value.status == 404 and caught.value.fields == {"item_id": "catalog-only"}


# --- batches -----------------------------------------------------------------------------------


def test_recommend_many_equals_recommend_per_user(planted_model: Planted, engine: Engine) -> None:
    now = planted_model.now_us
    users = ["a3", "b7", "a3", "visitor-1", "nobody", "b40", "a17", "visitor-2"]
    recent = {
        "b7": views(now, ["A1", "A2", "A3"]) + views(now, ["A4"], "purchase"),
        "visitor-1": views(now, ["B1", "B4"]),
        "visitor-2": views(now, ["A5"], "dismiss"),
        "b40": views(now, ["B2"], hours_ago=24 * 30),
    }
    excluded = {"a3": ["A9", "A15"], "nobody": ["B17"], "visitor-1": ["B16"]}
    trending = [("B3", 4.0), ("A6", 2.0)]
    for options in ({}, {"category": "A"}, {"include_seen": True, "exclude": ["A0", "B0"]}):
        batch = engine.recommend_many(
            users, k=6, recent=recent, excluded=excluded, trending=trending, now_us=now, **options
        )
        single = [
            engine.recommend(
                user,
                k=6,
                recent=recent.get(user, ()),
                excluded=excluded.get(user, ()),
                trending=trending,
                now_us=now,
                **options,
            )
            for user in users
        ]
        assert [(r.strategy, r.known_user) for r in batch] == [(r.strategy, r.known_user) for r in single]
        for got, want in zip(batch, single, strict=True):
            assert ids(got) == ids(want)
            np.testing.assert_allclose([i.score for i in got.items], [i.score for i in want.items], rtol=1e-6)
    assert [r.strategy for r in batch] == [
        "personalized",
        "realtime",
        "personalized",
        "realtime",
        "popular",
        "personalized",
        "personalized",
        "popular",
    ]
    assert engine.recommend_many([], k=3, now_us=now) == []


# --- other models ------------------------------------------------------------------------------


def test_an_artifact_without_histories_folds_in_recent_events_only(planted_model: Planted) -> None:
    bare = replace(planted_model.artifact, user_items=None, user_excluded=None)
    engine = Engine(bare, "v0", planted_model.settings)
    now = planted_model.now_us

    assert engine.recommend("a3", k=5, now_us=now).strategy == "personalized"
    turned = engine.recommend("a3", k=5, recent=views(now, [f"B{n}" for n in range(6)]), now_us=now)
    assert turned.strategy == "realtime" and set(ids(turned)) <= planted_model.block("B") | {"shared"}


def test_bpr_models_fold_in_with_their_item_bias(planted_bpr: Planted) -> None:
    artifact, now = planted_bpr.artifact, planted_bpr.now_us
    engine = Engine(artifact, "v1", planted_bpr.settings)
    assert artifact.manifest["parameters"]["model"] == "bpr"

    known = engine.recommend("a3", k=5, now_us=now)
    assert known.strategy == "personalized" and set(ids(known)) <= planted_bpr.block("A")
    visitor = engine.recommend(
        "visitor", k=5, recent=views(now, [f"B{n}" for n in range(8)], "add_to_cart"), now_us=now
    )
    assert visitor.strategy == "realtime" and set(ids(visitor)) <= planted_bpr.block("B") | {"shared"}
    vector, _ = engine.user_vector("visitor", views(now, ["B1"]), now)
    assert vector is not None and vector[-1] == 1.0  # the bias column stays fixed, as in BPR's own users

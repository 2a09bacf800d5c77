"""Latency of `Engine.recommend` and throughput of `Engine.recommend_many`, in process.

    .venv/bin/python bench/engine.py [--items 100000 --factors 64 --users 100000] [--artifact DIR]

Builds a synthetic artifact shaped like a real one (clustered item factors, 20 training items per
user, a catalog with 50 categories and 5% of items unavailable, an HNSW index as training builds
for 100k items), writes it and maps it back as a server does; `--artifact DIR` reuses one written
before. The factors are random, not fitted: latency depends on shapes, not on what was learned.

Prints p50/p99 of single requests for each strategy (20 recent events for the real-time ones)
and users/second of batches, for users with stored vectors and for users with recent events.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsvc import ann  # noqa: E402
from recsvc.artifact import ModelArtifact, load_artifact, write_artifact  # noqa: E402
from recsvc.config import Settings  # noqa: E402
from recsvc.engine import Engine, RecentEvent  # noqa: E402
from recsvc.idmap import IdMap  # noqa: E402

NOW_US = 1_717_200_000_000_000
HOUR_US = 3_600_000_000
TYPES = ("view", "view", "view", "add_to_cart", "purchase")


def synthetic_artifact(items: int, users: int, factors: int, seed: int = 0) -> ModelArtifact:
    rng = np.random.default_rng(seed)
    clusters = 200
    centres = rng.standard_normal((clusters, factors)).astype(np.float32)
    cluster_of = rng.integers(0, clusters, size=items)
    item_factors = (centres[cluster_of] + 0.5 * rng.standard_normal((items, factors))).astype(
        np.float32
    ) * 0.1
    user_factors = (centres[rng.integers(0, clusters, size=users)] * 0.3).astype(np.float32)
    per_user = 20
    rows = np.repeat(np.arange(users), per_user)
    cols = rng.integers(0, items, size=users * per_user)
    user_items = sp.csr_matrix(
        (rng.uniform(0.5, 8.0, size=len(rows)).astype(np.float32), (rows, cols)), shape=(users, items)
    )
    bought = rng.random(len(rows)) < 0.1
    user_excluded = sp.csr_matrix(
        (np.ones(int(bought.sum()), dtype=np.float32), (rows[bought], cols[bought])), shape=(users, items)
    )
    user_excluded.data[:] = 1.0
    item_ids = [f"i{n}" for n in range(items)]
    catalog = pa.table(
        {
            "item_id": item_ids,
            "title": [f"Item {n}" for n in range(items)],
            "category": [f"c{n % 50}" for n in range(items)],
            "price": rng.uniform(1, 100, size=items),
            "available": rng.random(items) > 0.05,
        }
    )
    settings = Settings()
    started = time.perf_counter()
    index = ann.build_index(item_factors, metric="ip", config=settings.index)
    similar = ann.build_index(item_factors, metric="cosine", config=settings.index)
    print(f"built {ann.index_kind(index)} indexes in {time.perf_counter() - started:.0f}s")
    return ModelArtifact(
        user_ids=IdMap([f"u{n}" for n in range(users)]),
        item_ids=IdMap(item_ids),
        user_factors=user_factors,
        item_factors=item_factors,
        popularity=rng.pareto(1.5, size=items).astype(np.float32),
        items=catalog,
        index=index,
        similar_index=similar,
        manifest={"parameters": {"model": "als", "regularization": 0.05, "alpha": 2.0, "factors": factors}},
        user_items=user_items,
        user_excluded=user_excluded,
    )


def recent_events(rng: np.random.Generator, items: int, count: int = 20) -> list[RecentEvent]:
    picks = rng.integers(0, items, size=count)
    return [
        RecentEvent(f"i{item}", TYPES[n % len(TYPES)], NOW_US - int(n) * HOUR_US)
        for n, item in enumerate(picks.tolist())
    ]


def percentiles(seconds: list[float]) -> str:
    ms = np.array(seconds) * 1000
    return f"p50 {np.percentile(ms, 50):6.3f} ms   p99 {np.percentile(ms, 99):6.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=10_000, help="users per recommend_many call")
    parser.add_argument("--artifact", type=Path, help="reuse (or create) the artifact in this folder")
    args = parser.parse_args()

    directory = args.artifact or Path(tempfile.mkdtemp(prefix="recsvc-bench-engine-"))
    if not (directory / "manifest.json").exists():
        directory.mkdir(parents=True, exist_ok=True)
        write_artifact(synthetic_artifact(args.items, args.users, args.factors), directory)
    artifact = load_artifact(directory)
    started = time.perf_counter()
    engine = Engine(artifact, "bench", Settings())
    print(f"engine ready in {time.perf_counter() - started:.2f}s; {os.cpu_count()} cores")
    n_items, n_users = len(artifact.item_ids), len(artifact.user_ids)
    rng = np.random.default_rng(1)
    catalog = engine.catalog.with_overrides(1, {f"i{n}": {"available": False} for n in range(0, n_items, 97)})

    cases = {
        "personalized (known, no recent)": lambda n: {"user_id": f"u{n % n_users}"},
        "realtime (known + 20 recent)": lambda n: {
            "user_id": f"u{n % n_users}",
            "recent": recent_events(rng, n_items),
        },
        "realtime (unknown + 20 recent)": lambda n: {
            "user_id": f"new{n}",
            "recent": recent_events(rng, n_items),
        },
        "realtime + category": lambda n: {
            "user_id": f"u{n % n_users}",
            "recent": recent_events(rng, n_items),
            "category": f"c{n % 50}",
        },
        "popular (unknown, no recent)": lambda n: {"user_id": f"new{n}"},
    }
    factors = artifact.item_factors.shape[1]
    print(f"recommend, k=10, {args.requests} requests each ({n_items:,} items x {factors} factors)")
    for name, make in cases.items():
        requests = [make(n) for n in range(args.requests)]
        for request in requests[:50]:
            engine.recommend(k=10, catalog=catalog, now_us=NOW_US, **request)
        seconds = []
        for request in requests:
            started = time.perf_counter()
            engine.recommend(k=10, catalog=catalog, now_us=NOW_US, **request)
            seconds.append(time.perf_counter() - started)
        print(f"  {name:<36}{percentiles(seconds)}")

    for n in range(50):
        engine.similar(f"i{n}", k=10, catalog=catalog)
    seconds = []
    for n in range(args.requests):
        started = time.perf_counter()
        engine.similar(f"i{n}", k=10, catalog=catalog)
        seconds.append(time.perf_counter() - started)
    print(f"  {'similar':<36}{percentiles(seconds)}")

    print(f"recommend_many, k=10, {n_users:,} users in batches of {args.batch:,}")
    user_ids = [f"u{n}" for n in range(n_users)]
    recent = {user: recent_events(rng, n_items) for user in user_ids}
    for name, per_user in (("stored vectors", None), ("20 recent events each", recent)):
        started = time.perf_counter()
        for start in range(0, n_users, args.batch):
            batch = user_ids[start : start + args.batch]
            engine.recommend_many(batch, k=10, recent=per_user, catalog=catalog, now_us=NOW_US)
        elapsed = time.perf_counter() - started
        print(f"  {name:<36}{n_users / elapsed:>10,.0f} users/s  ({elapsed:.1f}s)")


if __name__ == "__main__":
    main()

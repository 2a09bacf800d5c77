"""End-to-end `recsvc train` against implicit's raw `fit` on the same matrix, in one run.

    .venv/bin/python bench/train.py [--users 1000000 --items 100000 --events 20000000] [--data DIR]

Prints, for synthetic data of the given size: the time to read the event files, the raw fit, the
whole `recsvc train` (load, matrix, fit, evaluate, index, publish), each one's peak memory, and the
ratio end-to-end / (read + raw fit). Each measurement runs in its own process, so peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECSVC = [sys.executable, "-m", "recsvc.cli"]

RAW_FIT = """
import json, sys, time
from threadpoolctl import threadpool_limits
from implicit.cpu.als import AlternatingLeastSquares
from recsvc.config import load_settings
from training.pipeline import dataset_inputs, load_events, prepare
settings = load_settings(sys.argv[1])
started = time.perf_counter()
loaded = load_events(settings, dataset_inputs(settings, None, None)[0])
read = time.perf_counter() - started
train = prepare(settings, loaded).train
als = settings.training.als
model = AlternatingLeastSquares(factors=als.factors, regularization=als.regularization, alpha=als.alpha,
                                iterations=als.iterations, random_state=settings.training.random_state)
with threadpool_limits(1, "blas"):
    started = time.perf_counter()
    model.fit(train, show_progress=False)
    fit = time.perf_counter() - started
print(json.dumps({"read": read, "fit": fit, "nnz": int(train.nnz)}))
"""


def run_child(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, the child's own peak RSS in GiB (from wait4), and its stdout."""
    with tempfile.TemporaryFile(mode="w+") as stdout, tempfile.TemporaryFile(mode="w+") as stderr:
        started = time.perf_counter()
        child = subprocess.Popen(command, env=env, cwd=REPO, stdout=stdout, stderr=stderr, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        if child.returncode != 0:
            sys.exit(f"{' '.join(command)} failed:\n{stderr.read()}")
        return seconds, usage.ru_maxrss / 2**20, stdout.read()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--data", type=Path, help="reuse this synthetic dataset folder")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="recsvc-bench-"))
    data = args.data or work / "data"
    env = {
        **os.environ,
        "RECSVC_DATA__DIR": str(data),
        "RECSVC_REGISTRY__DIR": str(work / "models"),
        "RECSVC_LOG_LEVEL": "WARNING",
    }
    config = str(REPO / "configs" / "default.toml")
    if args.data is None:
        print(f"synthesizing {args.users:,} users x {args.items:,} items x {args.events:,} events ...")
        seconds, _, _ = run_child(
            [
                *RECSVC,
                "data",
                "synth",
                "--users",
                str(args.users),
                "--items",
                str(args.items),
                "--events",
                str(args.events),
            ],
            env,
        )
        print(f"  {seconds:.0f}s")

    _, raw_peak, out = run_child([sys.executable, "-c", RAW_FIT, config], env)
    raw = json.loads(out)
    e2e_seconds, e2e_peak, out = run_child([*RECSVC, "train", "--json"], env)
    manifest = json.loads(out)
    reference = raw["read"] + raw["fit"]

    print(
        f"data: {manifest['data']['events']:,} events, {manifest['data']['users']:,} users, "
        f"{manifest['data']['items']:,} items, {raw['nnz']:,} matrix cells; {os.cpu_count()} cores"
    )
    print(f"{'measurement':<44}{'seconds':>10}{'peak GiB':>10}")
    print(f"{'read event files (recsvc reader)':<44}{raw['read']:>10.1f}")
    print(f"{'implicit ALS fit, raw (peak: its whole process)':<44}{raw['fit']:>10.1f}{raw_peak:>10.2f}")
    print(f"{'recsvc train, end to end (process wall)':<44}{e2e_seconds:>10.1f}{e2e_peak:>10.2f}")
    print(f"ratio end-to-end / (read + raw fit) = {e2e_seconds / reference:.2f}  (target <= 1.5)")
    index = manifest["index"]
    print(
        f"index {index['kind']} recall@{index['recall_k']} = {index['recall']:.4f}; "
        f"ndcg@10 model {manifest['metrics']['model']['ndcg@10']:.4f} "
        f"vs popularity {manifest['metrics']['popularity']['ndcg@10']:.4f}"
    )


if __name__ == "__main__":
    main()

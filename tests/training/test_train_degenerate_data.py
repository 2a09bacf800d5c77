"""`recsvc train` on real data whose time stamps defeat the defaults: decayed to nothing, or all tied."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from recsvc.cli import main
from recsvc.config import Settings
from training.importers import import_dataset


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def datasets(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ML-100K and Last.fm imported as the README says, plus one purchase from 2026."""
    root = tmp_path_factory.mktemp("datasets")
    import_dataset("movielens", shared_data / "movielens-100k", root / "ml100k")
    import_dataset("lastfm", shared_data / "lastfm-hetrec2011-2k", root / "lastfm")
    (root / "one" / "events").mkdir(parents=True)
    (root / "one" / "events" / "e.csv").write_text(
        "user_id,item_id,type,ts\n196,242,purchase,2026-11-24T09:00:00Z\n"
    )
    return root


def test_one_new_event_beside_decades_old_ones_trains_on_all_of_them_and_warns(
    settings: Settings,
    datasets: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Decay underflowed to 0 for the 1998 ratings: a model of 0 interactions was published."""
    argv = ["train", "--events", str(datasets / "ml100k"), str(datasets / "one"), "--json"]
    with caplog.at_level(logging.WARNING, logger="training.matrix"):
        code, text, _ = run(capsys, *argv, "--registry", str(tmp_path / "decayed"))
    assert code == 0
    decayed = json.loads(text)["data"]
    [warning] = [record.getMessage() for record in caplog.records]
    assert "100,000 of 100,001 events" in warning and "half_life_days=30.0" in warning
    assert "1997-09-20" in warning and "2026-11-24" in warning

    monkeypatch.setenv("RECSVC_EVENTS__HALF_LIFE_DAYS", "0")
    code, text, _ = run(capsys, *argv, "--registry", str(tmp_path / "undecayed"))
    assert code == 0
    assert decayed["interactions"] == json.loads(text)["data"]["interactions"] > 97_000


def test_lastfm_with_every_event_on_one_day_holds_out_an_artist_per_user(
    settings: Settings, datasets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README promises a random split; it was none, and every metric was undefined."""
    registry = str(tmp_path / "registry")
    code, text, err = run(
        capsys, "train", "--events", str(datasets / "lastfm"), "--registry", registry, "--json"
    )
    assert code == 0, err
    trained = json.loads(text)
    assert trained["evaluation"]["users_evaluated"] > 1_800
    assert trained["data"]["held_out_users"] == trained["evaluation"]["users_evaluated"]
    metrics = trained["metrics"]
    assert metrics["model"]["ndcg@10"] > metrics["popularity"]["ndcg@10"]


def test_lastfm_time_cut_is_refused_and_publishes_nothing(
    settings: Settings,
    datasets: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every event at the cut: all were test and a model of 0 interactions was published."""
    monkeypatch.setenv("RECSVC_EVALUATION__SPLIT", "time_cut")
    registry = tmp_path / "registry"
    code, _, err = run(capsys, "train", "--events", str(datasets / "lastfm"), "--registry", str(registry))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "time cut at quantile 0.9 leaves nothing to train on" in err and "2011-01-01" in err
    assert not registry.exists() or not any(registry.iterdir())


def test_a_promote_metric_at_another_k_stops_train_before_any_work(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """At k=20 no manifest had ndcg@10, so `--promote-if-better` promoted worse models."""
    monkeypatch.setenv("RECSVC_EVALUATION__K", "20")
    registry = tmp_path / "registry"
    code, _, err = run(capsys, "train", "--promote-if-better", "--registry", str(registry))
    assert code == 2 and "promote_metric = 'ndcg@10'" in err and "k = 20" in err
    assert not registry.exists()

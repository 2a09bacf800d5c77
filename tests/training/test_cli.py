"""`recsvc` commands a data scientist runs, on the real MovieLens 100K data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from recsvc.cli import main
from recsvc.config import Settings
from recsvc.errors import EventFileError, InputError
from recsvc.keys import Keys
from training.pipeline import dataset_inputs


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def movielens(
    settings: Settings, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Path:
    out = tmp_path / "ml100k"
    code, text, _ = run(
        capsys, "data", "import", "movielens", str(shared_data / "movielens-100k"), "--out", str(out)
    )
    assert code == 0 and "100,000 events" in text
    return out


def test_train_list_show_promote_rollback(
    settings: Settings, movielens: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = str(tmp_path / "registry")
    code, text, _ = run(capsys, "train", "--events", str(movielens), "--registry", registry, "--json")
    assert code == 0
    trained = json.loads(text)
    first = trained["version"]
    metrics = trained["metrics"]
    assert metrics["model"]["ndcg@10"] > metrics["popularity"]["ndcg@10"]
    assert trained["data"]["users"] == 943 and trained["data"]["events"] == 100_000

    code, text, _ = run(capsys, "train", "--events", str(movielens), "--registry", registry, "--promote")
    assert code == 0 and "ndcg@10" in text and "promoted as asked" in text

    code, text, _ = run(capsys, "models", "list", "--registry", registry, "--json")
    versions = json.loads(text)
    assert versions[0]["version"] == first and len(versions) == 2
    assert [v["current"] for v in versions] == [False, True]
    code, text, _ = run(capsys, "models", "list", "--registry", registry)
    assert code == 0 and f"* {versions[1]['version']}" in text and versions[0]["created_at"] in text

    code, text, _ = run(capsys, "models", "show", first, "--registry", registry, "--json")
    shown = json.loads(text)
    assert shown["metrics"] == metrics and shown["schema_version"] >= 1
    assert shown["data"]["items"] == 1682

    assert run(capsys, "models", "promote", first, "--registry", registry)[0] == 0
    code, text, _ = run(capsys, "models", "rollback", "--registry", registry)
    assert code == 0 and versions[1]["version"] in text
    code, _, err = run(capsys, "models", "rollback", "--registry", registry)
    assert code == 1 and "roll" in err.lower()


def test_unknown_version_and_bad_config_are_clear_errors(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "models", "show", "v999999", "--registry", str(tmp_path))
    assert code == 1 and "v999999" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nmodel = 'svd'\n")
    code, _, err = run(capsys, "models", "list", "--config", str(bad))
    assert code == 2 and "training.model" in err


def test_a_path_that_cannot_be_used_is_one_line_naming_it(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "events.csv"
    a_file.write_text("not a folder")
    code, _, err = run(capsys, "models", "list", "--registry", str(a_file))
    assert code == 1 and str(a_file) in err and "Traceback" not in err
    assert err.startswith("recsvc: ") and len(err.strip().splitlines()) == 1


def test_train_reports_bad_rows_with_file_and_line(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,type,ts\nu1,a,view,2024-01-01T00:00:00Z\nu1,b,view,yesterday\n")
    code, _, err = run(capsys, "train", "--events", str(events))
    assert code == 1 and "events.csv:3" in err and "yesterday" in err


def test_train_reads_every_events_path_given(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both `--events a b` and `--events a --events b`: the second form used to drop `a`."""
    good = tmp_path / "good.csv"
    good.write_text("user_id,item_id,type,ts\nu1,a,view,2024-01-01T00:00:00Z\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,type,ts\nu1,a,view,2024-01-01T00:00:00Z\nu1,b,view,yesterday\n")
    for argv in (["--events", str(bad), str(good)], ["--events", str(bad), "--events", str(good)]):
        code, _, err = run(capsys, "train", *argv)
        assert code == 1 and "bad.csv:3" in err, err


def test_two_dataset_catalogs_must_be_chosen_between(settings: Settings, tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name / "events").mkdir(parents=True)
        (tmp_path / name / "events" / "e.csv").write_text("user_id,item_id,type,ts\n")
        (tmp_path / name / "items.parquet").write_bytes(b"")
    with pytest.raises(InputError, match="several catalogs"):
        dataset_inputs(settings, [tmp_path / "one", tmp_path / "two"], None)
    files, catalog = dataset_inputs(settings, [tmp_path / "one", tmp_path / "two"], tmp_path / "mine.parquet")
    assert files == [tmp_path / "one/events/e.csv", tmp_path / "two/events/e.csv"]
    assert catalog == tmp_path / "mine.parquet"


def test_a_folder_without_event_files_yet_is_passed_over_beside_inputs_that_have_some(
    settings: Settings, tmp_path: Path
) -> None:
    """`make run EVENTS=...` retrains on the given events and an archive folder that may be empty."""
    (tmp_path / "own" / "events").mkdir(parents=True)
    (tmp_path / "given.csv").write_text("user_id,item_id,type,ts\n")
    files, _ = dataset_inputs(settings, [tmp_path / "given.csv", tmp_path / "own"], None)
    assert files == [tmp_path / "given.csv"]
    with pytest.raises(EventFileError, match="holds no event files"):
        dataset_inputs(settings, [tmp_path / "own"], None)


def test_train_leaves_out_users_forgotten_through_the_api(
    redis_settings: Settings,
    redis_client: redis.Redis,
    planted: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RECSVC_REDIS__URL", redis_settings.redis.url)
    monkeypatch.setenv("RECSVC_REDIS__PREFIX", redis_settings.redis.prefix)
    redis_client.sadd(Keys(redis_settings.redis.prefix).forgotten(), "g0-u1", "g1-u2")
    forgotten_rows = sum(line.startswith(("g0-u1,", "g1-u2,")) for line in planted.read_text().splitlines())
    code, text, _ = run(capsys, "train", "--events", str(planted), "--json")
    assert code == 0
    data = json.loads(text)["data"]
    assert data["users"] == 118
    assert data["skipped"] == {"forgotten_user": forgotten_rows}

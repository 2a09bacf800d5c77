"""`recsvc campaigns ...`: the marketer's commands over the shipped example campaigns."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis
from shop import NOW, REPO

from notifier import outbox
from notifier.messages import Message, stage_messages
from recsvc.cli import main
from recsvc.config import Settings
from recsvc.keys import Keys
from recsvc.registry import Registry
from training.profiles import import_profiles

CAMPAIGNS = REPO / "configs" / "campaigns"


@pytest.fixture
def cli_env(shop_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("RECSVC_REDIS__URL", shop_settings.redis.url)
    monkeypatch.setenv("RECSVC_REDIS__PREFIX", shop_settings.redis.prefix)
    return shop_settings


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out) if code == 0 else out


@pytest.mark.parametrize("example", sorted(CAMPAIGNS.glob("*.toml")), ids=lambda path: path.stem)
def test_the_example_campaigns_are_created_and_listed(
    example: Path, cli_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    code, created = run(capsys, "campaigns", "create", str(example))
    assert code == 0 and created["status"] == "active"
    code, listed = run(capsys, "campaigns", "list")
    assert [campaign["id"] for campaign in listed] == [created["id"]]
    assert listed[0]["fires"] != "on demand"


def test_pause_resume_show_stats_and_delete(cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "campaigns", "create", str(CAMPAIGNS / "weekly-picks.toml"), "--id", "picks")
    assert run(capsys, "campaigns", "pause", "picks")[1]["status"] == "paused"
    assert run(capsys, "campaigns", "show", "picks")[1]["status"] == "paused"
    assert run(capsys, "campaigns", "resume", "picks")[1]["status"] == "active"
    code, report = run(capsys, "campaigns", "stats", "picks")
    assert code == 0 and report["total"]["sent"] == 0 and report["runs"] == []
    assert run(capsys, "campaigns", "delete", "picks")[1]["deleted"] is True
    assert run(capsys, "campaigns", "list")[1] == []


def test_a_bad_campaign_file_names_the_file_and_the_field(
    tmp_path: Path, cli_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "content": {"title": "t", "body": "b", "items": 0}}))
    assert main(["campaigns", "create", str(bad)]) != 0
    err = capsys.readouterr().err
    assert str(bad) in err and "content.items" in err


def test_run_deliver_preview_and_audience_from_the_command_line(
    tmp_path: Path,
    cli_env: Settings,
    registry: Registry,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A marketer's whole loop: define, size, preview, run, deliver (log provider), read results."""
    users = [f"gA-u{n}" for n in range(6)] + [f"gB-u{n}" for n in range(4)]
    table = pa.table({"user_id": users, "push_consent": [True] * 8 + [False] * 2, "tier": ["gold"] * 10})
    import_profiles(redis_client, cli_env, table, demo_devices=True)
    document = {
        "id": "now",
        "name": "Right now",
        "segment": {"push_consent": True},
        "content": {"title": "{{ item.title }}", "body": "{{ user.tier }}: {{ items | length }} picks"},
        "rules": {"quiet_start": "00:00", "quiet_end": "00:00"},  # no quiet hours: the real clock runs
    }
    path = tmp_path / "now.json"
    path.write_text(json.dumps(document))
    run(capsys, "campaigns", "create", str(path))

    assert run(capsys, "campaigns", "audience", "now")[1]["matching"] == 8
    code, preview = run(capsys, "campaigns", "preview", "now", "--user", "gA-u1")
    assert code == 0 and preview["group"] == "treatment" and preview["reason"] is None
    assert preview["items"] and all(item["category"] == "A" for item in preview["items"][:2])
    assert preview["body"] == "gold: 3 picks"

    code, summary = run(capsys, "campaigns", "run", "now", "--run-id", "first")
    assert code == 0 and summary["counts"]["sent"] == 8 and summary["messages"] == 8

    with caplog.at_level(logging.INFO, logger="recsvc.push"):
        assert main(["worker", "--burst"]) == 0
    pushes = [record for record in caplog.records if record.name == "recsvc.push"]
    assert sorted(str(record.args[0]) for record in pushes) == sorted(users[:8])  # type: ignore[index]

    code, report = run(capsys, "campaigns", "stats", "now")
    assert report["total"]["sent"] == report["total"]["delivered"] == 8
    assert report["runs"][0]["run_id"] == "first"

    # The same run again writes nothing new: each user has one message per run.
    assert run(capsys, "campaigns", "run", "now", "--run-id", "first")[1]["messages"] == 0


def test_dead_letters_are_listed_and_replayed(
    cli_env: Settings, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = Keys(cli_env.redis.prefix)
    message = Message("m-1", "spring", "run-1", "gA-u1", "Hi", "New for you", None, ("a1",), NOW.timestamp())
    with redis_client.pipeline(transaction=True) as pipe:  # stored, then given up, as a worker does
        stage_messages(pipe, keys, [message], now=NOW.timestamp(), ttl_seconds=3600)
        outbox.stage_dead_letter(pipe, keys, message, attempts=5, error="phone: 503 down")
        pipe.execute()

    code, listed = run(capsys, "dead-letters", "list", "--campaign", "spring")
    assert code == 0 and [(entry["message_id"], entry["error"]) for entry in listed] == [
        ("m-1", "phone: 503 down")
    ]
    assert run(capsys, "dead-letters", "list", "--campaign", "autumn")[1] == []
    assert run(capsys, "dead-letters", "replay")[1] == {"replayed": 1, "skipped": 0}
    assert run(capsys, "dead-letters", "list")[1] == []
    assert redis_client.hget(keys.message("m-1"), "status") == "queued"

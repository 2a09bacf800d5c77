"""`recsvc campaigns ...`: the marketer's commands over the shipped example campaigns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from shop import REPO

from recsvc.cli import main
from recsvc.config import Settings

CAMPAIGNS = REPO / "configs" / "campaigns"


@pytest.fixture
def cli_env(notifier_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("RECSVC_REDIS__URL", notifier_settings.redis.url)
    monkeypatch.setenv("RECSVC_REDIS__PREFIX", notifier_settings.redis.prefix)
    return notifier_settings


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

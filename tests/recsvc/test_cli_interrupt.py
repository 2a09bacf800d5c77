"""A Ctrl-C that reaches a command past its own graceful stop ends it quietly, with code 130."""

from __future__ import annotations

import argparse

import pytest

import notifier.cli
from recsvc.cli import main
from recsvc.config import Settings


def test_an_interrupt_exits_130_with_one_line_and_no_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(args: argparse.Namespace, settings: Settings) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(notifier.cli, "_worker", interrupted)
    assert main(["worker"]) == 130
    assert capsys.readouterr().err == "recsvc: interrupted\n"

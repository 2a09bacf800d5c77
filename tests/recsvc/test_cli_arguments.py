"""Command-line arguments that are counts or ports are checked by argparse, for every command."""

from __future__ import annotations

import pytest

from recsvc.cli import main


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["data", "synth", "--users", "0"], "argument --users: must be at least 1, got 0"),
        (["tune", "--trials", "-3"], "argument --trials: must be at least 1, got -3"),
        (["serve", "--workers", "0"], "argument --workers: must be at least 1, got 0"),
        (["serve", "--port", "99999"], "argument --port: ports go up to 65535, got 99999"),
        (["events", "archive", "--batch", "0"], "argument --batch: must be at least 1, got 0"),
        (["dead-letters", "list", "--limit", "x"], "argument --limit: 'x' is not a whole number"),
    ],
)
def test_a_count_of_zero_is_refused_not_taken_as_the_default(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--users 0` used to write the default 5,000 users, `--workers 0` to start one."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert said in capsys.readouterr().err

"""`recsvc models ...` over a registry holding broken versions, or no registry at all."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from test_artifact import make_artifact
from test_registry import BREAKAGES, corrupt_manifest, emptied

from recsvc.artifact import ModelArtifact
from recsvc.cli import main
from recsvc.config import Settings
from recsvc.registry import Registry


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def artifact() -> ModelArtifact:
    return make_artifact()


@pytest.fixture
def registry(settings: Settings, tmp_path: Path, artifact: ModelArtifact) -> Registry:
    """v000001 current, v000002 published."""
    registry = Registry(tmp_path / "models")
    registry.promote(registry.publish(artifact))
    registry.publish(artifact)
    return registry


def assert_one_line_error(err: str, starts: str) -> None:
    assert err.startswith(starts), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_promote_refuses_a_version_that_does_not_load(
    registry: Registry,
    artifact: ModelArtifact,
    breakage: Callable[[Path], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It used to print "current model: v000003" and exit 0; servers then refused the model."""
    broken = registry.publish(artifact)
    breakage(registry.path(broken))

    code, out, err = run(capsys, "models", "promote", broken, "--registry", str(registry.root))

    assert code == 1 and out == ""
    assert_one_line_error(err, f"recsvc: cannot promote {broken}: ")
    assert registry.current() == "v000001"
    assert run(capsys, "models", "promote", "v000002", "--registry", str(registry.root))[:2] == (
        0,
        "current model: v000002\n",
    )


def test_rollback_refuses_a_previous_version_that_no_longer_loads(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.promote("v000002")
    emptied(registry.path("v000001"))

    code, out, err = run(capsys, "models", "rollback", "--registry", str(registry.root))

    assert code == 1 and out == ""
    assert_one_line_error(err, "recsvc: cannot roll back to v000001: ")
    assert registry.current() == "v000002"


def test_list_shows_every_version_and_marks_the_broken_ones(
    registry: Registry, artifact: ModelArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    """One broken version used to make `models list` exit 1 and list nothing."""
    emptied(registry.path("v000002"))
    corrupt_manifest(registry.path(registry.publish(artifact)))
    root = str(registry.root)

    code, text, err = run(capsys, "models", "list", "--registry", root)
    assert code == 0 and err == ""
    lines = text.splitlines()[1:]
    assert [line[:11] for line in lines] == ["* v000001  ", "  v000002  ", "  v000003  "]
    assert "BROKEN" not in lines[0]
    assert lines[1].startswith("  v000002   BROKEN: ") and lines[1].endswith("manifest.json: missing file")
    assert lines[2].startswith("  v000003   BROKEN: ") and "unreadable manifest" in lines[2]

    code, text, _ = run(capsys, "models", "list", "--registry", root, "--json")
    assert code == 0
    rows = json.loads(text)
    assert [(row["version"], row["current"]) for row in rows] == [
        ("v000001", True),
        ("v000002", False),
        ("v000003", False),
    ]
    good, *broken = rows
    assert good["error"] is None and good["created_at"] and good["metrics"] == {"ndcg@10": 0.25}
    assert all(row["error"] and row["created_at"] is None and row["metrics"] == {} for row in broken)


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["list", "--json"],
        ["show", "v000001"],
        ["show", "v000001", "--json"],
        ["promote", "v000001"],
        ["rollback"],
    ],
)
def test_a_registry_that_does_not_exist_is_an_error_and_is_not_created(
    settings: Settings, tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`models list --registry <typo>` used to say "no models in ..." and create the folder."""
    missing = tmp_path / "nonexistent_reg"

    code, out, err = run(capsys, "models", *argv, "--registry", str(missing))

    assert code == 1 and out == ""
    assert_one_line_error(err, f"recsvc: no model registry at {missing}")
    assert not missing.exists()


def test_an_empty_registry_lists_no_models(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert run(capsys, "models", "list", "--registry", str(tmp_path / "empty")) == (
        0,
        f"no models in {tmp_path / 'empty'}\n",
        "",
    )
    assert run(capsys, "models", "list", "--registry", str(tmp_path / "empty"), "--json")[:2] == (0, "[]\n")

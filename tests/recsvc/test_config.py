from __future__ import annotations

from pathlib import Path

import pytest

from recsvc.config import Settings, load_settings
from recsvc.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
# Settings files; configs/campaigns/ holds campaign documents, parsed by the notifier's CLI tests.
SHIPPED = sorted(path for path in (REPO / "configs").rglob("*.toml") if "campaigns" not in path.parts)


def test_there_are_shipped_configs() -> None:
    assert REPO / "configs" / "default.toml" in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_parses(path: Path) -> None:
    settings = load_settings(path)
    assert isinstance(settings, Settings)
    assert "purchase" in settings.events.types


def test_default_file_sets_every_field_it_documents() -> None:
    """The default file and the code's defaults agree, so the file documents real values."""
    from_file = load_settings(REPO / "configs" / "default.toml").model_dump()
    assert from_file == Settings().model_dump()


def test_environment_overrides_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSVC_TRAINING__ALS__FACTORS", "17")
    monkeypatch.setenv("RECSVC_EVENTS__TYPES__VIEW__WEIGHT", "0.5")
    settings = load_settings(REPO / "configs" / "default.toml")
    assert settings.training.als.factors == 17
    assert settings.events.types["view"].weight == 0.5
    assert settings.events.types["purchase"].weight == 8.0


def test_config_env_var_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[training]\nmodel = 'bpr'\n")
    monkeypatch.setenv("RECSVC_CONFIG", str(path))
    assert load_settings().training.model == "bpr"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[training.als]\nfactors = 0\n", "training.als.factors"),
        ("[training]\nmodel = 'svd'\n", "training.model"),
        ("[evaluation]\npromote_metric = 'auc'\n", "evaluation"),
        ("[training]\nfactorz = 3\n", "training.factorz"),
        ("[events.types.view]\nweight = -1\n", "events.types.view.weight"),
        # Windows whose records Redis could not expire (a TTL past its range stops every run).
        ("[notifier.rules]\nmin_gap_hours = 1e13\n", "notifier.rules.min_gap_hours"),
        ("[notifier.rules]\nitem_repeat_days = inf\n", "notifier.rules.item_repeat_days"),
    ],
)
def test_wrong_value_names_its_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert key in caught.value.detail


def test_promote_metric_at_another_k_than_evaluation_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluated at k=20, no manifest has ndcg@10: `--promote-if-better` promoted anything."""
    monkeypatch.setenv("RECSVC_EVALUATION__K", "20")
    with pytest.raises(ConfigError, match=r"promote_metric = 'ndcg@10'.* k = 20") as caught:
        load_settings(REPO / "configs" / "default.toml")
    assert caught.value.fields["key"] == "evaluation"
    monkeypatch.setenv("RECSVC_EVALUATION__PROMOTE_METRIC", "map@20")
    settings = load_settings(REPO / "configs" / "default.toml")
    assert (settings.evaluation.k, settings.evaluation.promote_metric) == (20, "map@20")


def test_wrong_env_value_names_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSVC_INDEX__HNSW_M", "many")
    with pytest.raises(ConfigError, match=r"index\.hnsw_m"):
        load_settings(REPO / "configs" / "default.toml")


def test_missing_file_and_syntax_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[training\n")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load_settings(broken)


def test_api_keys_from_the_environment_replace_the_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSVC_SERVING__API_KEYS", '{"s3cret": "admin"}')
    assert load_settings(REPO / "configs" / "default.toml").serving.api_keys == {"s3cret": "admin"}
    monkeypatch.setenv("RECSVC_SERVING__API_KEYS", '{"s3cret": "boss"}')
    with pytest.raises(ConfigError, match="s3cret"):
        load_settings(REPO / "configs" / "default.toml")
    monkeypatch.setenv("RECSVC_SERVING__API_KEYS", "not json")
    with pytest.raises(ConfigError, match="serving"):
        load_settings(REPO / "configs" / "default.toml")

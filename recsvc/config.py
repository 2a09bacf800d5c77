"""Typed settings: `configs/*.toml` first, `RECSVC_*` environment variables over it.

One validated object is built at start-up by `load_settings` and passed down; nothing reads
configuration at import time. A wrong value stops start-up with a message naming its key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from recsvc.errors import ConfigError

DEFAULT_CONFIG = Path("configs/default.toml")
CONFIG_ENV = "RECSVC_CONFIG"
API_KEYS_ENV = "RECSVC_SERVING__API_KEYS"


class Section(BaseModel):
    """A config table: unknown keys are typos, so they are rejected."""

    model_config = ConfigDict(extra="forbid")


class EventType(Section):
    """How much one event of a type says about a user's interest in an item."""

    weight: float = Field(ge=0.0)
    value: Literal["ignore", "linear", "log1p"] = "ignore"
    exclude_from_recommendations: bool = False


def _default_event_types() -> dict[str, EventType]:
    return {
        "view": EventType(weight=1.0),
        "add_to_cart": EventType(weight=4.0),
        "favorite": EventType(weight=3.0),
        "purchase": EventType(weight=8.0, exclude_from_recommendations=True),
        "rate": EventType(weight=1.0, value="linear"),
        "play": EventType(weight=1.0, value="log1p"),
        "push_open": EventType(weight=2.0),
        "push_click": EventType(weight=3.0),
        "dismiss": EventType(weight=0.0, exclude_from_recommendations=True),
    }


class EventsConfig(Section):
    types: dict[str, EventType] = Field(default_factory=_default_event_types)
    half_life_days: float = Field(default=30.0, ge=0.0)
    max_id_length: int = Field(default=256, ge=1)


class DataConfig(Section):
    dir: Path = Path("var/data")
    on_error: Literal["fail", "skip"] = "fail"


class AlsConfig(Section):
    factors: int = Field(default=64, ge=1)
    regularization: float = Field(default=0.05, ge=0.0)
    alpha: float = Field(default=2.0, gt=0.0)
    iterations: int = Field(default=15, ge=1)


class BprConfig(Section):
    factors: int = Field(default=64, ge=1)
    learning_rate: float = Field(default=0.05, gt=0.0)
    regularization: float = Field(default=0.01, ge=0.0)
    iterations: int = Field(default=100, ge=1)


class TrainingConfig(Section):
    model: Literal["als", "bpr"] = "als"
    als: AlsConfig = Field(default_factory=AlsConfig)
    bpr: BprConfig = Field(default_factory=BprConfig)
    min_user_interactions: int = Field(default=1, ge=1)
    min_item_interactions: int = Field(default=1, ge=1)
    refit_on_full_data: bool = False
    num_threads: int = Field(default=0, ge=0)
    random_state: int = 42


class EvaluationConfig(Section):
    split: Literal["leave_last", "time_cut"] = "leave_last"
    holdout_per_user: int = Field(default=1, ge=1)
    time_cut_quantile: float = Field(default=0.9, gt=0.0, lt=1.0)
    k: int = Field(default=10, ge=1)
    max_users: int = Field(default=10_000, ge=1)
    promote_metric: str = "ndcg@10"

    @model_validator(mode="after")
    def _metric_is_known(self) -> EvaluationConfig:
        name, _, k = self.promote_metric.partition("@")
        known = {"precision", "recall", "ndcg", "map", "hit_rate", "coverage"}
        if name not in known or not k.isdigit():
            raise ValueError(f"promote_metric must look like 'ndcg@10' with a name in {sorted(known)}")
        # Evaluation measures metrics at `k` only: a promote metric at another k is never in a
        # manifest, so `--promote-if-better` would promote whatever it is compared with.
        if int(k) != self.k:
            raise ValueError(
                f"promote_metric = '{self.promote_metric}' needs metrics at {int(k)} but k = {self.k}, "
                f"the only cut-off evaluated: set promote_metric = '{name}@{self.k}' or k = {int(k)}"
            )
        return self


class IndexConfig(Section):
    exact_max_items: int = Field(default=50_000, ge=1)
    hnsw_m: int = Field(default=32, ge=4)
    hnsw_ef_construction: int = Field(default=200, ge=8)
    hnsw_ef_search: int = Field(default=128, ge=8)
    recall_queries: int = Field(default=1_000, ge=1)
    recall_k: int = Field(default=10, ge=1)


class RegistryConfig(Section):
    dir: Path = Path("var/models")


class SynthConfig(Section):
    users: int = Field(default=5_000, ge=1)
    items: int = Field(default=2_000, ge=1)
    events: int = Field(default=200_000, ge=1)
    categories: int = Field(default=20, ge=1)
    days: int = Field(default=28, ge=1)
    seed: int = 7


class RedisConfig(Section):
    url: str = ""
    prefix: str = "recsvc"
    embedded_path: Path = Path("var/redis/recsvc.db")


Role = Literal["app", "admin"]


def _development_api_keys() -> dict[str, Role]:
    return {"dev-app-key": "app", "dev-admin-key": "admin"}


class ServingConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1)
    api_keys: dict[str, Role] = Field(default_factory=_development_api_keys)
    default_k: int = Field(default=10, ge=1)
    max_k: int = Field(default=100, ge=1)
    max_batch: int = Field(default=500, ge=1)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    history_max: int = Field(default=200, ge=1)
    history_ttl_days: float = Field(default=90.0, gt=0.0)
    recent_half_life_days: float = Field(default=7.0, ge=0.0)
    trending_half_life_hours: float = Field(default=24.0, gt=0.0)
    model_poll_seconds: float = Field(default=2.0, gt=0.0)
    redis_timeout_seconds: float = Field(default=0.25, gt=0.0)
    redis_connections_at_start: int = Field(default=16, ge=0)
    retry_after_seconds: int = Field(default=5, ge=1)


def _clock_time(value: str) -> str:
    hours, _, minutes = value.partition(":")
    if not (
        hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60 and len(minutes) == 2
    ):
        raise ValueError(f"'{value}' is not a time of day like '21:30'")
    return value


ClockTime = Annotated[str, AfterValidator(_clock_time)]


# Upper bounds of the rules' windows: far beyond any real campaign's, and small enough that the
# records they keep get a TTL Redis accepts (a window of 1e12 hours stopped every run's write).
MAX_GAP_HOURS = 8_760.0  # a year
MAX_REPEAT_DAYS = 3_650.0  # ten years


class PushRules(Section):
    """How often and when a user may get a push; each campaign may override any of these."""

    max_per_day: int = Field(default=2, ge=0)
    max_per_week: int = Field(default=6, ge=0)
    min_gap_hours: float = Field(default=24.0, ge=0.0, le=MAX_GAP_HOURS)
    item_repeat_days: float = Field(default=14.0, ge=0.0, le=MAX_REPEAT_DAYS)
    quiet_start: ClockTime = "21:00"
    quiet_end: ClockTime = "08:00"


class DeliveryConfig(Section):
    provider: Literal["log", "fcm", "webhook"] = "log"
    max_attempts: int = Field(default=5, ge=1)
    backoff_base_seconds: float = Field(default=30.0, gt=0.0)
    backoff_max_seconds: float = Field(default=3600.0, gt=0.0)
    claim_idle_seconds: float = Field(default=300.0, gt=0.0)
    read_count: int = Field(default=100, ge=1)
    block_seconds: float = Field(default=1.0, gt=0.0)
    max_delay_hours: float = Field(default=24.0, ge=0.0)


class FcmConfig(Section):
    project_id: str = ""
    endpoint: str = "https://fcm.googleapis.com"
    credentials_file: str = ""
    rate_per_second: float = Field(default=500.0, gt=0.0)
    timeout_seconds: float = Field(default=10.0, gt=0.0)


class WebhookConfig(Section):
    url: str = ""
    secret: str = ""
    rate_per_second: float = Field(default=100.0, gt=0.0)
    timeout_seconds: float = Field(default=10.0, gt=0.0)


class LogProviderConfig(Section):
    rate_per_second: float = Field(default=1000.0, gt=0.0)


class ProvidersConfig(Section):
    fcm: FcmConfig = Field(default_factory=FcmConfig)
    webhook: WebhookConfig = Field(default_factory=WebhookConfig)
    log: LogProviderConfig = Field(default_factory=LogProviderConfig)


def _default_retrain_command() -> list[str]:
    return ["recsvc", "train", "--promote-if-better"]


class SchedulerConfig(Section):
    lease_seconds: float = Field(default=30.0, gt=0.0)
    renew_seconds: float = Field(default=10.0, gt=0.0)
    trigger_poll_seconds: float = Field(default=30.0, gt=0.0)
    misfire_grace_seconds: int = Field(default=3600, ge=1)
    archive_cron: str = "*/15 * * * *"
    retrain_cron: str = "0 3 * * *"
    retrain_command: list[str] = Field(default_factory=_default_retrain_command)


class TrackingConfig(Section):
    open_event_type: str = "push_open"
    click_event_type: str = "push_click"
    conversion_event_type: str = "purchase"
    conversion_window_hours: float = Field(default=72.0, gt=0.0)


class NotifierConfig(Section):
    default_timezone: str = "UTC"
    batch_size: int = Field(default=5_000, ge=1)
    message_ttl_days: float = Field(default=30.0, gt=0.0)
    run_lock_seconds: float = Field(default=60.0, gt=0.0)
    rules: PushRules = Field(default_factory=PushRules)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    providers: ProvidersConfig = Field(default_factory=ProvidersConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


class Settings(BaseSettings):
    """Every setting of recsvc; `configs/default.toml` documents each key."""

    model_config = SettingsConfigDict(
        env_prefix="RECSVC_", env_nested_delimiter="__", extra="forbid", toml_file=None
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    events: EventsConfig = Field(default_factory=EventsConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    notifier: NotifierConfig = Field(default_factory=NotifierConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = settings_cls.model_config.get("toml_file")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def config_path(explicit: str | Path | None = None) -> Path:
    """The config file to read: the explicit one, else `RECSVC_CONFIG`, else the default."""
    if explicit is not None:
        return Path(explicit)
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_settings(path: str | Path | None = None) -> Settings:
    """Read and validate settings, turning any problem into a `ConfigError` naming the key."""
    toml_file = config_path(path)
    if not toml_file.is_file():
        raise ConfigError(f"config file not found: {toml_file}", key=str(toml_file))

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=toml_file)

    try:
        loaded = _FromFile()
        if API_KEYS_ENV in os.environ:
            # Secrets from the environment replace the file's table instead of merging into it,
            # so the local development keys can never stay valid beside production ones.
            serving = {**loaded.serving.model_dump(), "api_keys": _env_api_keys()}
            loaded = loaded.model_copy(update={"serving": ServingConfig.model_validate(serving)})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, toml_file), key=_first_key(exc)) from exc
    except SettingsError as exc:  # an environment value that is not valid JSON for its table
        raise ConfigError(f"RECSVC_* environment: {exc} ({exc.__cause__})", key="environment") from exc
    except ValueError as exc:  # a TOML syntax error
        raise ConfigError(f"{toml_file}: {exc}", key=str(toml_file)) from exc
    return loaded


def _env_api_keys() -> dict[str, str]:
    try:
        keys = json.loads(os.environ[API_KEYS_ENV])
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{API_KEYS_ENV} must be a JSON object of key -> role: {exc}", key="serving.api_keys"
        ) from exc
    if not isinstance(keys, dict):
        raise ConfigError(f"{API_KEYS_ENV} must be a JSON object of key -> role", key="serving.api_keys")
    return keys


def _first_key(exc: ValidationError) -> str:
    return ".".join(str(part) for part in exc.errors()[0]["loc"])


def _describe(exc: ValidationError, toml_file: Path) -> str:
    lines = [f"invalid configuration ({toml_file} and RECSVC_* environment):"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        lines.append(f"  {key}: {error['msg']}")
    return "\n".join(lines)

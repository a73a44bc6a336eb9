"""The gateway's settings: one object, read from the environment once per process.

| variable                   | meaning                                                          | default           |
|----------------------------|------------------------------------------------------------------|-------------------|
| HXP_MASTER_KEY             | the operator's key (admin API, every model); 32 characters or more | required to serve |
| HXP_DATABASE_URL           | SQL store for keys, usage and conversations (the launcher moves  | DATABASE_URL, else|
|                            | DATABASE_URL here, hidden from LiteLLM)                          | .state SQLite file|
| REDIS_URL                  | shared rate limits and cache; absent: in-process, one replica    | none              |
| HXP_RATE_LIMIT_FAIL_CLOSED | reject (503) instead of admitting when Redis cannot count        | false             |
| HXP_REDIS_MAX_CONNECTIONS  | bound on each of a worker's Redis pools (LiteLLM's cache and its | 8                 |
|                            | coordination Redis); a request waits for a free connection       |                   |
| HXP_CACHE_TTL_S            | response cache time to live                                      | 3600              |
| HXP_KEY_CACHE_TTL_S        | how long a key lookup is trusted before the store is re-read     | 10                |
| HXP_KEY_CACHE_SIZE         | keys kept in each worker's key cache (least recently used leave) | 10000             |
| HXP_UNKNOWN_KEY_CACHE_SIZE | unknown secrets remembered, apart from the keys (misses never    | 10000             |
|                            | evict a valid key)                                               |                   |
| HXP_BACKENDS               | JSON {model name: [base URL, ...]} overriding the template       | none              |
| HXP_BACKEND_URL_TEMPLATE   | base URL of each model's engine, with {name} and {port}          | http://127.0.0.1:  |
|                            |                                                                  | {port}/v1         |
| HXP_PREFIX_ROUTING         | send chat requests sharing their leading messages to the same    | true              |
|                            | engine of a model (hxp.conversations.routing); off: LiteLLM's    |                   |
|                            | own choice                                                       |                   |
| HXP_MAX_BODY_BYTES         | largest request body accepted (413 beyond)                       | 10485760 (10 MiB) |
| HXP_MAX_INPUTS             | most items in an embeddings `input` or a completions `prompt`    | 2048              |
|                            | list                                                             |                   |
| HXP_METRICS_TOKEN          | when set, /metrics needs ``Authorization: Bearer <token>``       | none (open)       |
| HXP_OPENAPI                | serve our API description at /openapi.json                       | false             |
| HXP_REQUEST_LOG            | request log: ``stdout``, ``off``, or a file path (JSON lines)    | stdout            |
| HXP_REQUEST_LOG_CONTENT    | include the prompt and completion text in the request log       | false             |
| HXP_CONSOLE_SESSION_TTL_S  | how long a web console sign-in lasts (/console)                  | 28800 (8 hours)   |
| HXP_CONVERSATION_RETENTION_DAYS | how long stored responses (since created) and conversations | 30                |
|                            | (since last used) are kept; then purged (hourly, or `hxp         |                   |
|                            | conversations purge`)                                            |                   |
| HXP_AUDIT_RETENTION_DAYS   | how long audit events are kept; older ones are purged (hourly, or | 365               |
|                            | `hxp audit purge`), a checkpoint keeping the chain verifiable    |                   |
| HXP_AUDIT_REFUSAL_WINDOW_S | refusals (401, 403, 429) are audited as one row per window, key  | 60                |
|                            | (or ``anonymous``), client address and status                    |                   |
| HXP_USAGE_BATCH_SIZE       | usage rows per INSERT                                            | 200               |
| HXP_USAGE_FLUSH_INTERVAL_S | longest wait of a partial batch of usage rows                    | 1.0               |
| HXP_USAGE_MAX_BUFFER       | usage rows in memory before spilling to disk (1: every row)      | 10000             |
| HXP_USAGE_RETRY_MAX_S      | longest retry delay while the database is away                   | 5.0               |
| HXP_USAGE_SPILL_MAX_MB     | bound on the spill folder (all workers); rows beyond it are      | 256               |
|                            | dropped and counted in ``llm_usage_rows_dropped_total``          |                   |
| HXP_USAGE_REFUSAL_ROWS_PER_MIN | refused requests (4xx) a minute each process logs one row    | 3000              |
|                            | each; beyond, one row per minute, model, status and key, with    |                   |
|                            | ``request_count`` requests                                       |                   |
| HXP_USAGE_ROLLUP_INTERVAL_S | ``llm_model_performance`` interval                              | 60                |
| HXP_USAGE_SPILL_DIR        | the spill folder (shared by the workers)                         | <state>/usage-spill |

The usage pipeline (:mod:`hxp.gateway.usage.pipeline`) reads the HXP_USAGE_* settings.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from hxp.core import redaction
from hxp.core.database import embedded_url
from hxp.core.stores import qdrant_location

DEFAULT_BACKEND_URL_TEMPLATE = "http://127.0.0.1:{port}/v1"
DATABASE_URL_VAR = "HXP_DATABASE_URL"
MIN_MASTER_KEY_CHARS = 32
_TRUE = {"1", "true", "yes", "on", "closed"}


class Settings(BaseSettings):
    """Every gateway setting (see the module's table)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    master_key: SecretStr | None = Field(None, validation_alias="HXP_MASTER_KEY")
    database_url: str = Field("", validation_alias=AliasChoices(DATABASE_URL_VAR, "DATABASE_URL"))
    redis_url: str | None = Field(None, validation_alias="REDIS_URL")
    rate_limit_fail_closed: Annotated[bool, NoDecode] = Field(False, validation_alias="HXP_RATE_LIMIT_FAIL_CLOSED")
    redis_max_connections: int = Field(8, gt=0, validation_alias="HXP_REDIS_MAX_CONNECTIONS")
    cache_ttl_s: int = Field(3600, gt=0, validation_alias="HXP_CACHE_TTL_S")
    key_cache_ttl_s: float = Field(10.0, ge=0, validation_alias="HXP_KEY_CACHE_TTL_S")
    key_cache_size: int = Field(10_000, gt=0, validation_alias="HXP_KEY_CACHE_SIZE")
    unknown_key_cache_size: int = Field(10_000, gt=0, validation_alias="HXP_UNKNOWN_KEY_CACHE_SIZE")
    backends: dict[str, list[str]] = Field(default_factory=dict, validation_alias="HXP_BACKENDS")
    backend_url_template: str = Field(DEFAULT_BACKEND_URL_TEMPLATE, validation_alias="HXP_BACKEND_URL_TEMPLATE")
    prefix_routing: Annotated[bool, NoDecode] = Field(True, validation_alias="HXP_PREFIX_ROUTING")
    max_body_bytes: int = Field(10 * 2**20, gt=0, validation_alias="HXP_MAX_BODY_BYTES")
    max_inputs: int = Field(2048, gt=0, validation_alias="HXP_MAX_INPUTS")
    metrics_token: SecretStr | None = Field(None, validation_alias="HXP_METRICS_TOKEN")
    openapi: Annotated[bool, NoDecode] = Field(False, validation_alias="HXP_OPENAPI")
    request_log: str = Field("stdout", validation_alias="HXP_REQUEST_LOG")
    request_log_content: Annotated[bool, NoDecode] = Field(False, validation_alias="HXP_REQUEST_LOG_CONTENT")
    usage_batch_size: int = Field(200, gt=0, validation_alias="HXP_USAGE_BATCH_SIZE")
    usage_flush_interval_s: float = Field(1.0, gt=0, validation_alias="HXP_USAGE_FLUSH_INTERVAL_S")
    usage_max_buffer: int = Field(10_000, gt=0, validation_alias="HXP_USAGE_MAX_BUFFER")
    usage_retry_max_s: float = Field(5.0, gt=0, validation_alias="HXP_USAGE_RETRY_MAX_S")
    usage_spill_max_mb: float = Field(256.0, gt=0, validation_alias="HXP_USAGE_SPILL_MAX_MB")
    usage_refusal_rows_per_min: int = Field(3000, ge=0, validation_alias="HXP_USAGE_REFUSAL_ROWS_PER_MIN")
    usage_rollup_interval_s: float = Field(60.0, gt=0, validation_alias="HXP_USAGE_ROLLUP_INTERVAL_S")
    usage_spill_dir: str = Field("", validation_alias="HXP_USAGE_SPILL_DIR")
    console_session_ttl_s: int = Field(8 * 3600, gt=0, validation_alias="HXP_CONSOLE_SESSION_TTL_S")
    conversation_retention_days: float = Field(30.0, gt=0, validation_alias="HXP_CONVERSATION_RETENTION_DAYS")
    audit_retention_days: float = Field(365.0, gt=0, validation_alias="HXP_AUDIT_RETENTION_DAYS")
    audit_refusal_window_s: float = Field(60.0, gt=0, validation_alias="HXP_AUDIT_REFUSAL_WINDOW_S")

    @field_validator("rate_limit_fail_closed", "openapi", "request_log_content", "prefix_routing", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> bool:
        return value if isinstance(value, bool) else str(value).strip().lower() in _TRUE

    @field_validator("database_url", mode="after")
    @classmethod
    def _default_database(cls, value: str) -> str:
        return value or embedded_url()

    @field_validator("redis_url", "backend_url_template", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("backend_url_template", mode="after")
    @classmethod
    def _template_default(cls, value: str | None) -> str:
        return value or DEFAULT_BACKEND_URL_TEMPLATE

    @property
    def master_secret(self) -> str | None:
        """The master key's value (None when unset)."""
        return self.master_key.get_secret_value() if self.master_key else None

    def master_key_problem(self) -> str | None:
        """Why the master key cannot serve, naming the setting; None when it can."""
        secret = self.master_secret
        if not secret:
            return "HXP_MASTER_KEY is not set: the gateway needs a master key (e.g. sk-$(openssl rand -hex 24))"
        if len(secret) < MIN_MASTER_KEY_CHARS:
            return (
                f"HXP_MASTER_KEY is {len(secret)} characters long; use at least {MIN_MASTER_KEY_CHARS} "
                "(e.g. sk-$(openssl rand -hex 24))"
            )
        return None


def load() -> Settings:
    """The settings from the environment (see the module's table); a bad value raises, naming it."""
    return Settings()


def register_secrets(cfg: Settings) -> None:
    """Every secret this process knows (master key, metrics token, passwords in store URLs, Qdrant's API key),
    masked wherever it would appear in its output (:mod:`hxp.core.redaction`)."""
    qdrant = qdrant_location()
    metrics_token = cfg.metrics_token.get_secret_value() if cfg.metrics_token is not None else None
    for secret in (cfg.master_secret, metrics_token, qdrant.get("api_key")):
        redaction.register_secret(secret)
    for url in (cfg.database_url, cfg.redis_url, qdrant.get("url")):
        redaction.register_url_secrets(url)

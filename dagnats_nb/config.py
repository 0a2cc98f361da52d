"""Engine settings: defaults < ``dagnats.yaml`` < ``DAGNATS_*`` environment < arguments.

The keys and variables are those of the reference Go dagnats (``data_dir``, ``nats_port``,
``max_store_bytes``, ``runs_max_age``...). Each key is one field of :class:`Settings`;
its type does the parsing and its description is the hint shown when a value is invalid.

Choices:

- Sizes are ints or strings such as ``10GiB``, ``512MB``, ``1.5G``, ``100k``: KiB/MiB/GiB/TiB
  and bare K/M/G/T are binary (1024), KB/MB/GB/TB decimal (1000); case does not matter.
- Durations are Go duration strings (``720h``, ``1h30m``, ``500ms``; read by
  :mod:`dagnats_nb.dag.durations`, as in workflow files) or numbers of seconds.
  For the optional limits (``runs_max_age``, ``history_max_bytes``, ``max_memory_store``)
  0 means "unset", as in the Go zero value: no limit (the server's default memory store).
  ``runs_max_age`` defaults to the Go engine's 720h (30 days: its WORKFLOW_HISTORY max age,
  and the default of its own ``runs_max_age``); 0 keeps the whole history.
- ``sync_interval`` is kept as the string nats-server reads: ``always`` or a duration.
- A relative ``data_dir`` (from any source) is resolved against ``cwd``.
- An empty ``DAGNATS_*`` variable counts as unset. Unknown ``DAGNATS_*`` variables are
  ignored (other tools use that prefix); unknown YAML keys warn; unknown arguments are an error.
- The config file is the explicit ``config_file``, else ``DAGNATS_CONFIG``, else
  ``dagnats.yaml`` in ``cwd`` when present; a named file that is missing is an error.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import warnings
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from dagnats_nb.dag.durations import parse_duration
from dagnats_nb.errors import ConfigError, WorkflowError

__all__ = ["Settings", "load_settings", "parse_size", "CONFIG_FILE_NAME", "ENV_PREFIX"]

CONFIG_FILE_NAME = "dagnats.yaml"
ENV_PREFIX = "DAGNATS_"
DEFAULT_SOURCE = "default"
ARGUMENT_SOURCE = "argument"

_SIZE_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgtp])(i?)(b?)|(b?))$", re.IGNORECASE)
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
SECRET_KEYS = frozenset({"llm_api_key", "webhook_secret", "bridge_token"})
_LOG_LEVELS = dict(debug="debug", info="info", warn="warn", warning="warn", error="error")


def parse_size(value: int | float | str) -> int:
    """Return the number of bytes in ``value`` (an int, or a string such as ``10GiB``)."""
    if isinstance(value, bool):
        raise ValueError("not a size")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("not a whole number of bytes")
        return int(value)
    if not isinstance(value, str):
        raise ValueError("not a size")
    sign, text = _split_sign(value)
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not a size: {value!r}")
    number, prefix, binary, byte = match.group(1, 2, 3, 4)
    base = 1000 if prefix and byte and not binary else 1024
    factor = base ** _POWERS[prefix.lower()] if prefix else 1
    return sign * int(Decimal(number) * factor)


def _split_sign(text: str) -> tuple[int, str]:
    text = text.strip()
    if text[:1] in ("+", "-"):
        return (-1 if text[0] == "-" else 1), text[1:]
    return 1, text


def _parse_duration(value: Any) -> timedelta:
    """Parse a Go duration string (``1h30m``, ``500ms``) or a number of seconds. A sign is
    kept (the keys' own checks refuse negative values with their hint)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("not a duration")
    try:
        if not isinstance(value, str):
            return timedelta(seconds=value)
        sign, text = _split_sign(value)
        if re.fullmatch(r"\d+(\.\d*)?", text):
            return sign * timedelta(seconds=float(text))
        return sign * parse_duration(text)
    except OverflowError as exc:
        raise ValueError("duration out of range") from exc
    except WorkflowError as exc:
        raise ValueError(str(exc)) from None


def _to_size(value: Any) -> int:
    size = parse_size(value)
    if size <= 0:
        raise ValueError("must be positive")
    return size


def _to_optional_size(value: Any) -> int | None:
    if value is None:
        return None
    size = parse_size(value)
    if size < 0:
        raise ValueError("must not be negative")
    return size or None


def _to_duration(value: Any) -> timedelta:
    duration = _parse_duration(value)
    if duration <= timedelta(0):
        raise ValueError("must be positive")
    return duration


def _to_optional_duration(value: Any) -> timedelta | None:
    if value is None:
        return None
    duration = _parse_duration(value)
    if duration < timedelta(0):
        raise ValueError("must not be negative")
    return duration or None


def _to_sync_interval(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = f"{value}s"
    if not isinstance(value, str):
        raise ValueError("not a sync interval")
    text = value.strip()
    if text.lower() == "always":
        return "always"
    _to_duration(text)
    return text


def _to_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return [item.strip() for item in value if item.strip()]
    raise ValueError("not a list of strings")


def _to_optional_str(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("not a string")
    return value.strip() or None


def _to_log_level(value: Any) -> str:
    if not isinstance(value, str) or value.strip().lower() not in _LOG_LEVELS:
        raise ValueError("unknown log level")
    return _LOG_LEVELS[value.strip().lower()]


Size = Annotated[int, BeforeValidator(_to_size)]
OptionalSize = Annotated[int | None, BeforeValidator(_to_optional_size)]
Duration = Annotated[timedelta, BeforeValidator(_to_duration)]
OptionalDuration = Annotated[timedelta | None, BeforeValidator(_to_optional_duration)]
Port = Annotated[int, Field(ge=0, le=65535)]
OptionalStr = Annotated[str | None, BeforeValidator(_to_optional_str)]
StrList = Annotated[list[str], BeforeValidator(_to_list)]
Rate = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1)]


def _to_llm_provider(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or value.strip().lower() not in ("openai", "simulated"):
        raise ValueError("unknown llm provider")
    return value.strip().lower()


def _to_auto_flag(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value.strip().lower() if isinstance(value, str) else None
    flag = {"yes": "true", "on": "true", "1": "true", "no": "false", "off": "false"}
    text = flag.get(text, text)
    if text not in ("auto", "true", "false"):
        raise ValueError("must be auto, true or false")
    return text


def _key(default: Any, hint: str) -> Any:
    """One settings key: its default and the hint shown when a value is invalid."""
    if isinstance(default, list):
        return Field(default_factory=list, description=hint)
    return Field(default=default, description=hint)


class Settings(BaseModel):
    """The engine's settings (immutable). Build them with :func:`load_settings`."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    data_dir: Path = _key(Path(".dagnats"), "must be a directory path")
    nats_port: Port = _key(0, "must be a port number from 0 (a free port) to 65535")
    monitor_port: Port | None = _key(
        None, "must be a port number from 0 (a free port) to 65535, or null for no monitoring"
    )
    nats_url: OptionalStr = _key(None, "must be a NATS URL such as nats://host:4222")
    max_store_bytes: Size = _key(10 * 1024**3, "must be a positive size such as 10GiB")
    max_memory_store: OptionalSize = _key(
        None, "must be a size such as 512MiB, or 0 for the server default"
    )
    runs_max_age: OptionalDuration = _key(
        timedelta(hours=720), "must be a duration such as 720h, or 0 for none"
    )
    history_max_bytes: OptionalSize = _key(None, "must be a size such as 1GiB, or 0 for none")
    # Memory and restart that follow the active runs: finished runs leave memory (their
    # records answer reads; runtime.eviction) and a restart loads the last checkpoint's
    # snapshots and the history after it (runtime.snapshots), not the whole history.
    snapshot_restart: bool = _key(True, "must be true or false")
    server_memory_limit: OptionalSize = _key(
        None, "must be a size such as 256MiB (nats-server's GOMEMLIMIT), or 0 for none"
    )
    sync_interval: Annotated[str | None, BeforeValidator(_to_sync_interval)] = _key(
        None, 'use "always" or a duration such as 2m'
    )
    leaf_remotes: StrList = _key(
        [], "must be a list of URLs such as nats-leaf://host:7422 (comma-separated in env)"
    )
    leaf_credentials: OptionalStr = _key(
        None, "must be the path of a .creds file, or its content (-----BEGIN ...)"
    )
    jetstream_domain: OptionalStr = _key(
        None, "must be a JetStream domain name (leaf mode: the embedded server's domain)"
    )
    nats_jetstream_replicas: Annotated[int, Field(ge=1, le=5)] = _key(
        1, "must be the stream replica count, 1 to 5 (3 on a three-server cluster)"
    )
    # Who applies WORKFLOW_HISTORY on a NATS we attach to: "auto" orchestrates unless the
    # Go dagnats engine does (its durable consumer `orchestrator` on WORKFLOW_HISTORY), "on"
    # always (refused in one line while Go's runs), "off" never (this engine works tasks
    # and reads). The embedded server is always ours to orchestrate.
    orchestrate: Literal["auto", "on", "off"] = _key(
        "auto", "must be auto, on or off (who runs the orchestrator on a shared NATS)"
    )
    ack_wait: Duration = _key(timedelta(seconds=30), "must be a positive duration such as 30s")
    log_level: Annotated[str, BeforeValidator(_to_log_level)] = _key(
        "warn", "must be one of debug, info, warn, error"
    )
    # Health thresholds (the production checklist's) and the HTTP /health, /ready endpoints.
    health_consumer_pending: Annotated[int, Field(ge=0)] = _key(
        1000, "must be a number of pending tasks, >= 0"
    )
    health_dlq_per_min: Rate = _key(1.0, "must be dead letters per minute, >= 0")
    health_dlq_window: Duration = _key(
        timedelta(minutes=5), "must be a positive duration such as 5m"
    )
    health_store_share: Fraction = _key(0.8, "must be a fraction of max_store_bytes, 0 to 1")
    health_worker_gap: Duration = _key(
        timedelta(seconds=60), "must be a positive duration such as 60s"
    )
    health_orchestrator_lag: Annotated[int, Field(ge=0)] = _key(
        500, "must be a number of history events, >= 0"
    )
    http_addr: OptionalStr = _key(
        None, "must be host:port such as 127.0.0.1:8080 (port 0: a free one), or unset for off"
    )
    # Slow or many clients cannot hold the HTTP server: a request's head within
    # http_header_timeout (a connection that sends nothing is closed then: the idle timeout),
    # its body within http_body_timeout; connections past http_max_connections get a 503.
    http_header_timeout: Duration = _key(
        timedelta(seconds=10), "must be a positive duration such as 10s"
    )
    http_body_timeout: Duration = _key(
        timedelta(seconds=60), "must be a positive duration such as 60s"
    )
    http_max_connections: Annotated[int, Field(ge=1, le=100_000)] = _key(
        128, "must be a whole number of connections, at least 1"
    )
    # Secured HTTP endpoints (need http_addr): webhooks need a secret (a trigger's own or
    # this one), the worker bridge a bearer token; unset, they are off.
    webhook_secret: OptionalStr = _key(None, "must be a shared secret string")
    bridge_token: OptionalStr = _key(None, "must be a bearer token string")
    webhook_max_body: Size = _key(1 << 20, "must be a positive size such as 1MiB")
    # The built-in `llm` task type (dagnats_nb.llm). With no llm_provider, the provider is
    # openai when llm_base_url, llm_api_key or OPENAI_API_KEY is set, else the simulator.
    llm_enabled: bool = _key(True, "must be true or false")
    llm_provider: Annotated[str | None, BeforeValidator(_to_llm_provider)] = _key(
        None, "must be openai or simulated (or unset to choose from the other llm_* keys)"
    )
    llm_base_url: OptionalStr = _key(None, "must be a URL such as http://localhost:11434/v1")
    llm_api_key: OptionalStr = _key(None, "must be an API key (OPENAI_API_KEY is read if unset)")
    llm_model: str = _key("gpt-4o-mini", "must be a model name such as gpt-4o-mini")
    llm_concurrency: Annotated[int, Field(ge=1, le=100_000)] = _key(
        32, "must be a whole number of calls in flight, at least 1"
    )
    llm_timeout: Duration = _key(timedelta(seconds=60), "must be a positive duration such as 60s")
    llm_rpm: Rate = _key(0.0, "must be requests per minute (a number, 0 for no limit)")
    llm_tpm: Rate = _key(0.0, "must be tokens per minute (a number, 0 for no limit)")
    llm_sim_seed: int = _key(0, "must be a whole number")
    llm_sim_latency_ms: Rate = _key(800.0, "must be a median latency in milliseconds, >= 0")
    llm_sim_latency_sigma: Rate = _key(0.5, "must be the log-normal sigma, >= 0 (0: fixed)")
    llm_sim_tokens_per_s: Rate = _key(40.0, "must be tokens per second, >= 0 (0: all at once)")
    llm_sim_429_rate: Fraction = _key(0.0, "must be a fraction of calls from 0 to 1")
    llm_sim_500_rate: Fraction = _key(0.0, "must be a fraction of calls from 0 to 1")
    llm_sim_timeout_rate: Fraction = _key(0.0, "must be a fraction of calls from 0 to 1")
    llm_sim_retry_after: Duration = _key(
        timedelta(seconds=1), "must be a positive duration such as 1s"
    )

    # Cached steps (runtime.cache): the step cache's KV bucket `task_cache` keeps a value
    # cache_ttl, at most cache_max_bytes (oldest dropped first); the built-in llm steps are
    # cached by default in the notebook's engine (auto), always (true) or never (false).
    cache_ttl: Duration = _key(timedelta(days=7), "must be a positive duration such as 168h")
    cache_max_bytes: Size = _key(256 * 1024**2, "must be a positive size such as 256MiB")
    llm_cache: Annotated[str, BeforeValidator(_to_auto_flag)] = _key(
        "auto", "must be auto (on in a notebook's engine), true or false"
    )

    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("data_dir", mode="before")
    @classmethod
    def _resolve_data_dir(cls, value: Any, info: ValidationInfo) -> Path:
        if not isinstance(value, str | os.PathLike) or not str(value).strip():
            raise ValueError("not a path")
        path = Path(os.path.expanduser(str(value).strip()))
        cwd = (info.context or {}).get("cwd") or Path.cwd()
        return Path(os.path.normpath(Path(cwd) / path))

    def source(self, key: str) -> str:
        """Where ``key``'s value came from: a file path, ``environment VAR``, ``argument``..."""
        if key not in type(self).model_fields:
            raise KeyError(key)
        if key in self._sources:
            return self._sources[key]
        return ARGUMENT_SOURCE if key in self.model_fields_set else DEFAULT_SOURCE

    def describe(self) -> list[tuple[str, Any, str]]:
        """Every key as ``(key, value, source)``, in declaration order; secrets that are set
        show as ``***`` (and inline leaf credentials too)."""
        return [(key, self.shown(key), self.source(key)) for key in type(self).model_fields]

    def shown(self, key: str) -> Any:
        """``key``'s value as it may be displayed: a secret that is set becomes ``***``."""
        value = getattr(self, key)
        if value and (key in SECRET_KEYS or (key == "leaf_credentials" and "\n" in value)):
            return "***"
        return value

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` validated and applied (their source is ``argument``)."""
        raw = {key: (getattr(self, key), self.source(key)) for key in type(self).model_fields}
        for key, value in _known(changes).items():
            raw[key] = (value, ARGUMENT_SOURCE)
        return _build(raw, cwd=None)


def load_settings(
    config_file: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    **overrides: Any,
) -> Settings:
    """Load settings: defaults < ``dagnats.yaml`` < ``DAGNATS_*`` env < ``overrides``.

    ``None`` overrides are ignored. An invalid value raises :class:`ConfigError` naming the
    key, the value and where it came from.
    """
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else Path(cwd)
    raw: dict[str, tuple[Any, str]] = {}
    path = _config_path(config_file, env, cwd)
    if path is not None:
        for key, value in _read_yaml(path).items():
            raw[key] = (value, str(path))
    for key in Settings.model_fields:
        var = ENV_PREFIX + key.upper()
        if env.get(var, "").strip():
            raw[key] = (env[var], f"environment {var}")
    for key, value in _known(overrides).items():
        if value is not None:
            raw[key] = (value, ARGUMENT_SOURCE)
    return _build(raw, cwd=cwd)


def _config_path(config_file: str | Path | None, env: Mapping[str, str], cwd: Path) -> Path | None:
    if config_file is not None:
        named, origin = Path(config_file), "config_file"
    elif env.get(ENV_PREFIX + "CONFIG", "").strip():
        named, origin = Path(env[ENV_PREFIX + "CONFIG"].strip()), "DAGNATS_CONFIG"
    else:
        default = cwd / CONFIG_FILE_NAME
        return default if default.is_file() else None
    path = cwd / named.expanduser()
    if not path.is_file():
        raise ConfigError(f'{origin} = "{named}": no such file; create it or fix the path')
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where}: {problem}; fix the YAML syntax") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping of setting keys to values")
    known = {}
    for key, value in data.items():
        if key in Settings.model_fields:
            known[key] = value
        else:
            warnings.warn(f"{path}: unknown key {key!r} ignored{_suggest(key)}", stacklevel=3)
    return known


def _known(overrides: Mapping[str, Any]) -> dict[str, Any]:
    for key in overrides:
        if key not in Settings.model_fields:
            raise ConfigError(f"unknown setting {key!r}{_suggest(key)}")
    return dict(overrides)


def _suggest(key: Any) -> str:
    close = difflib.get_close_matches(str(key), list(Settings.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build(raw: Mapping[str, tuple[Any, str]], cwd: Path | None) -> Settings:
    values = {key: value for key, (value, _) in raw.items()}
    try:
        settings = Settings.model_validate(values, context={"cwd": cwd})
    except ValidationError as exc:
        fields = list(Settings.model_fields)
        key = min(
            (str(err["loc"][0]) for err in exc.errors() if err["loc"]),
            key=lambda k: fields.index(k) if k in fields else len(fields),
        )
        value, source = raw.get(key, (None, DEFAULT_SOURCE))
        hint = Settings.model_fields[key].description if key in Settings.model_fields else ""
        raise ConfigError(f"{key} = {_show(value)} (from {source}): {hint}") from None
    settings._sources = {key: source for key, (_, source) in raw.items()}
    return settings


def _show(value: Any) -> str:
    if isinstance(value, timedelta):
        return f'"{value}"'
    return json.dumps(value, default=str, ensure_ascii=False)

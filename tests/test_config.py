from __future__ import annotations

import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from dagnats_nb.config import Settings, load_settings, parse_size
from dagnats_nb.errors import ConfigError


def write_yaml(directory: Path, text: str, name: str = "dagnats.yaml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults(tmp_path: Path) -> None:
    s = load_settings(env={}, cwd=tmp_path)
    assert s.data_dir == tmp_path / ".dagnats"
    assert s.nats_port == 0
    assert s.monitor_port is None
    assert s.nats_url is None
    assert s.max_store_bytes == 10737418240
    assert s.max_memory_store is None
    assert s.runs_max_age == timedelta(hours=720)  # the Go engine's 30 days
    assert s.history_max_bytes is None
    assert s.sync_interval is None
    assert s.leaf_remotes == []
    assert s.leaf_credentials is None
    assert s.ack_wait == timedelta(seconds=30)
    assert s.log_level == "warn"
    assert {source for _, _, source in s.describe()} == {"default"}


def test_precedence_defaults_yaml_env_arguments(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "nats_port: 4300\nmax_store_bytes: 1GiB\nlog_level: info\nsync_interval: 10s\n"
        "runs_max_age: 720h\nmonitor_port: 8300\n",
    )
    env = {
        "DAGNATS_MAX_STORE_BYTES": "2GiB",
        "DAGNATS_LOG_LEVEL": "debug",
        "DAGNATS_MONITOR_PORT": "8400",
        "DAGNATS_ACK_WAIT": "2s",
    }
    s = load_settings(env=env, cwd=tmp_path, log_level="error", monitor_port=None, ack_wait=None)
    assert s.nats_port == 4300
    assert s.max_store_bytes == 2 * 1024**3
    assert s.log_level == "error"
    assert s.sync_interval == "10s"
    assert s.runs_max_age == timedelta(days=30)
    assert s.monitor_port == 8400  # None overrides are ignored
    assert s.ack_wait == timedelta(seconds=2)
    sources = {key: source for key, _, source in s.describe()}
    assert sources["nats_port"] == str(path)
    assert sources["sync_interval"] == str(path)
    assert sources["max_store_bytes"] == "environment DAGNATS_MAX_STORE_BYTES"
    assert sources["monitor_port"] == "environment DAGNATS_MONITOR_PORT"
    assert sources["log_level"] == "argument"
    assert sources["data_dir"] == "default"
    assert [key for key, _, _ in s.describe()] == list(Settings.model_fields)


def test_config_file_choice(tmp_path: Path) -> None:
    write_yaml(tmp_path, "nats_port: 1001\n")
    other = write_yaml(tmp_path, "nats_port: 1002\n", name="other.yaml")
    named = write_yaml(tmp_path, "nats_port: 1003\n", name="named.yaml")
    assert load_settings(env={}, cwd=tmp_path).nats_port == 1001
    env = {"DAGNATS_CONFIG": str(other)}
    assert load_settings(env=env, cwd=tmp_path).nats_port == 1002
    assert load_settings("named.yaml", env=env, cwd=tmp_path).nats_port == 1003
    assert load_settings(named, env=env, cwd=tmp_path).source("nats_port") == str(named)
    assert load_settings(env={}, cwd=tmp_path / "..").nats_port == 0


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r'config_file = "nope.yaml": no such file'):
        load_settings("nope.yaml", env={}, cwd=tmp_path)
    with pytest.raises(ConfigError, match=r'DAGNATS_CONFIG = "/no/such.yaml": no such file'):
        load_settings(env={"DAGNATS_CONFIG": "/no/such.yaml"}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("yaml_text", "env", "overrides", "message"),
    [
        (
            "",
            {"DAGNATS_MAX_STORE_BYTES": "-5"},
            {},
            'max_store_bytes = "-5" (from environment DAGNATS_MAX_STORE_BYTES): '
            "must be a positive size such as 10GiB",
        ),
        (
            "max_store_bytes: -5\n",
            {},
            {},
            "max_store_bytes = -5 (from {file}): must be a positive size such as 10GiB",
        ),
        (
            "max_store_bytes: lots\n",
            {},
            {},
            'max_store_bytes = "lots" (from {file}): must be a positive size such as 10GiB',
        ),
        (
            "sync_interval: sometimes\n",
            {},
            {},
            'sync_interval = "sometimes" (from {file}): use "always" or a duration such as 2m',
        ),
        (
            "",
            {"DAGNATS_RUNS_MAX_AGE": "forever"},
            {},
            'runs_max_age = "forever" (from environment DAGNATS_RUNS_MAX_AGE): '
            "must be a duration such as 720h, or 0 for none",
        ),
        (
            "",
            {},
            {"ack_wait": "0s"},
            'ack_wait = "0s" (from argument): must be a positive duration such as 30s',
        ),
        (
            "nats_port: 70000\n",
            {"DAGNATS_LOG_LEVEL": "loud"},
            {},
            "nats_port = 70000 (from {file}): must be a port number from 0 (a free port) to 65535",
        ),
        (
            "max_memory_store: 1GiB\n",
            {"DAGNATS_MAX_MEMORY_STORE": "12 parsecs"},
            {},
            'max_memory_store = "12 parsecs" (from environment DAGNATS_MAX_MEMORY_STORE): '
            "must be a size such as 512MiB, or 0 for the server default",
        ),
    ],
)
def test_invalid_values_name_key_value_and_source(
    tmp_path: Path, yaml_text: str, env: dict[str, str], overrides: dict, message: str
) -> None:
    path = write_yaml(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as info:
        load_settings(env=env, cwd=tmp_path, **overrides)
    assert str(info.value) == message.format(file=path)
    assert "\n" not in str(info.value)


def test_unknown_yaml_key_warns(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "max_store_byte: 1GiB\nnats_port: 4222\n")
    with pytest.warns(UserWarning, match="unknown key 'max_store_byte'") as record:
        s = load_settings(env={}, cwd=tmp_path)
    assert str(path) in str(record[0].message)
    assert "did you mean 'max_store_bytes'" in str(record[0].message)
    assert s.nats_port == 4222


def test_unknown_argument_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting 'nats_prot'.*'nats_port'"):
        load_settings(env={}, cwd=tmp_path, nats_prot=4222)


def test_unknown_environment_variables_are_ignored(tmp_path: Path) -> None:
    env = {"DAGNATS_NATS_SERVER": "/x", "DAGNATS_SOMETHING_ELSE": "1", "DAGNATS_NATS_PORT": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = load_settings(env=env, cwd=tmp_path)
    assert s.nats_port == 0
    assert s.source("nats_port") == "default"


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "nats_port: 1\nmax_store_bytes: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"^{path}:\d+: "):
        load_settings(env={}, cwd=tmp_path)
    write_yaml(tmp_path, "- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings(env={}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("10GiB", 10 * 1024**3),
        ("512MB", 512 * 1000**2),
        ("1.5G", int(1.5 * 1024**3)),
        ("100k", 100 * 1024),
        ("100KB", 100 * 1000),
        ("100kib", 100 * 1024),
        ("2 MiB", 2 * 1024**2),
        ("1T", 1024**4),
        ("3TB", 3 * 1000**4),
        ("1024", 1024),
        ("64B", 64),
        (4096, 4096),
        (1e6, 1000000),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GiB", "10 gigs", "1.2.3M", "10XB", "--5", True, None, 1.5])
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("720h", timedelta(hours=720)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5h", timedelta(minutes=90)),
        ("2m3.5s", timedelta(minutes=2, seconds=3.5)),
        ("500ms", timedelta(milliseconds=500)),
        ("1500us", timedelta(microseconds=1500)),
        ("3600", timedelta(hours=1)),
        (60, timedelta(minutes=1)),
        ("0", None),
        (0, None),
        ("0s", None),
    ],
)
def test_durations(tmp_path: Path, value: object, expected: timedelta | None) -> None:
    assert load_settings(env={}, cwd=tmp_path, runs_max_age=value).runs_max_age == expected


@pytest.mark.parametrize("value", ["5 minutes", "1h-30m", "--1s", "99999999999999h", "h", True])
def test_bad_durations(tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigError, match=r"^runs_max_age = .* \(from argument\): must be"):
        load_settings(env={}, cwd=tmp_path, runs_max_age=value)


def test_sizes_and_sync_interval_values(tmp_path: Path) -> None:
    write_yaml(
        tmp_path,
        "max_memory_store: 256MiB\nhistory_max_bytes: 0\nsync_interval: ALWAYS\n"
        "leaf_remotes: [nats-leaf://a:7422, nats-leaf://b:7422]\n",
    )
    s = load_settings(env={}, cwd=tmp_path)
    assert s.max_memory_store == 256 * 1024**2
    assert s.history_max_bytes is None
    assert s.sync_interval == "always"
    assert s.leaf_remotes == ["nats-leaf://a:7422", "nats-leaf://b:7422"]
    env = {
        "DAGNATS_LEAF_REMOTES": "nats-leaf://c:7422, nats-leaf://d:7422",
        "DAGNATS_SYNC_INTERVAL": "2m",
    }
    s = load_settings(env=env, cwd=tmp_path)
    assert s.leaf_remotes == ["nats-leaf://c:7422", "nats-leaf://d:7422"]
    assert s.sync_interval == "2m"


def test_data_dir_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(env={}, cwd=tmp_path, data_dir="x/../y").data_dir == tmp_path / "y"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    s = load_settings(env={"DAGNATS_DATA_DIR": "~/engine"}, cwd=tmp_path)
    assert s.data_dir == tmp_path / "home" / "engine"


def test_settings_are_frozen_and_replace_keeps_sources(tmp_path: Path) -> None:
    s = load_settings(env={"DAGNATS_NATS_PORT": "4400"}, cwd=tmp_path)
    with pytest.raises(ValidationError):
        s.nats_port = 1  # type: ignore[misc]
    t = s.replace(max_store_bytes="1GiB")
    assert (t.nats_port, t.source("nats_port")) == (4400, "environment DAGNATS_NATS_PORT")
    assert (t.max_store_bytes, t.source("max_store_bytes")) == (1024**3, "argument")
    assert t.source("log_level") == "default"
    with pytest.raises(ConfigError, match=r"max_store_bytes = 0 \(from argument\)"):
        s.replace(max_store_bytes=0)


def test_secrets_are_masked_in_describe_but_kept_in_settings():
    creds = "-----BEGIN NATS USER JWT-----\nabc\n------END NATS USER JWT------\n"
    s = load_settings(
        env={"DAGNATS_WEBHOOK_SECRET": "hunter2", "DAGNATS_BRIDGE_TOKEN": "tok"},
        llm_api_key="sk-1",
        leaf_credentials=creds,
    )
    shown = {key: value for key, value, _ in s.describe()}
    assert shown["webhook_secret"] == shown["bridge_token"] == shown["llm_api_key"] == "***"
    assert shown["leaf_credentials"] == "***"
    assert (s.webhook_secret, s.bridge_token, s.llm_api_key) == ("hunter2", "tok", "sk-1")
    assert load_settings(leaf_credentials="/etc/leaf.creds").shown("leaf_credentials") == (
        "/etc/leaf.creds"
    )
    assert shown["bridge_token"] != load_settings().shown("bridge_token")

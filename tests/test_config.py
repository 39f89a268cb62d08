"""Configuration: the shipped file, environment overrides, and the errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from b3lb.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


def test_shipped_file_lists_every_default():
    assert load_config(REPO / "conf" / "b3lb.conf", env={}) == Config()


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no conf/b3lb.conf here
    config = load_config(env={})
    assert config.server.port == 8000 and config.database.url == "" and config.poller.error_after == 2


def test_environment_overrides_file_and_types(tmp_path):
    path = tmp_path / "b3lb.conf"
    path.write_text('[server]\nport = 9000\napi_base_domain = "api.example.org"\n', encoding="utf-8")
    env = {
        "B3LB_SERVER_PORT": "9100",
        "B3LB_API_ALLOWED_SHA_ALGORITHMS": "sha256, sha512",
        "B3LB_API_LEGACY_401_ON_AUTH_FAILURE": "yes",
        "B3LB_POLLER_INTERVAL": "2.5",
        "DATABASE_URL": "postgresql://db.example/b3lb",
        "REDIS_URL": "redis://127.0.0.1:6379/1",
    }
    config = load_config(path, env=env)
    assert config.server.port == 9100 and config.server.api_base_domain == "api.example.org"
    assert config.api.allowed_sha_algorithms == ["sha256", "sha512"]
    assert config.api.legacy_401_on_auth_failure is True and config.poller.interval == 2.5
    assert config.database.url == "postgresql://db.example/b3lb" and config.redis.url == "redis://127.0.0.1:6379/1"
    assert config.public_base_url == "https://api.example.org"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[server]\nprot = 1\n", {}, "unknown setting server.prot"),
        ("[sever]\nport = 1\n", {}, "unknown section [sever]"),
        ('[server]\nport = "eighty"\n', {}, "server.port: expected int"),
        ("[server]\nport = 1.5\n", {}, "server.port: expected int"),
        ("[api]\nlegacy_401_on_auth_failure = 1\n", {}, "api.legacy_401_on_auth_failure: expected bool"),
        ('[api]\nallowed_sha_algorithms = "sha1"\n', {}, "api.allowed_sha_algorithms: expected list[str]"),
        ('[api]\nallowed_sha_algorithms = ["md5"]\n', {}, "unknown algorithm 'md5'"),
        ('[server]\npublic_scheme = "ftp"\n', {}, "server.public_scheme"),
        ('[server]\nlog_level = "LOUD"\n', {}, "server.log_level"),
        ('[database]\nsynchronous_commit = "maybe"\n', {}, "database.synchronous_commit"),
        ("[poller]\nerror_after = 0\n", {}, "poller.error_after"),
        ("[server]\nport = 70000\n", {}, "server.port"),
        ("", {"B3LB_SERVER_PORT": "http"}, "B3LB_SERVER_PORT: expected int"),
        ("", {"B3LB_POLLER_INTERVAL": "soon"}, "B3LB_POLLER_INTERVAL: expected float"),
        ("", {"B3LB_API_ADD_MESSAGE_KEYS": "perhaps"}, "B3LB_API_ADD_MESSAGE_KEYS: expected bool"),
        ("server = 1\n", {}, "server: expected a [server] table"),
        ("[server\n", {}, "not valid TOML"),
    ],
)
def test_bad_configuration_names_the_key(tmp_path, text, env, message):
    path = tmp_path / "b3lb.conf"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_config(path, env=env)
    assert message in str(error.value)


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.conf", env={})
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(env={"B3LB_CONFIG": str(tmp_path / "absent.conf")})

"""Configuration: a TOML file (conf/b3lb.conf documents every key) plus environment overrides.

Every setting is `section.key`; the environment variable `B3LB_SECTION_KEY` overrides it, and
`DATABASE_URL` / `REDIS_URL` override `database.url` / `redis.url`. Unknown keys and wrong types
are start-up errors that name the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("conf/b3lb.conf")
SHA_ALGORITHMS = ("sha1", "sha256", "sha384", "sha512")
MAX_WORKERS = 64


class ConfigError(Exception):
    """A configuration problem an operator must fix; the message names the key."""


@dataclass(frozen=True)
class ServerConfig:
    listen_address: str = "127.0.0.1"
    port: int = 8000
    # Tenant API hosts are {slug}[-NNN].{api_base_domain}; injected asset and callback URLs use it too.
    api_base_domain: str = "localhost"
    # Scheme of the URLs we hand to nodes and browsers (logo, slide, CSS, end callback).
    public_scheme: str = "https"
    # Peers whose X-Forwarded-Host header is believed (exact IP addresses).
    trusted_proxies: list[str] = field(default_factory=list)
    # Bytes: a larger body is answered 413, a longer request line 414, a longer head 431 (httplimits.py).
    max_body_size: int = 4 * 1024 * 1024
    max_header_size: int = 64 * 1024
    # Seconds: for a request head once its first byte came, for a request body, and for the next
    # request on an open connection. A client that takes longer is disconnected.
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    log_level: str = "INFO"
    # Embedded database and other local state live here.
    data_dir: str = "./var"
    # Seconds in-flight requests may take to finish after SIGTERM.
    shutdown_grace: float = 10.0
    # Processes serving the port (SO_REUSEPORT), e.g. one per core; more than 1 adds a supervisor
    # process that starts, restarts and stops them (b3lb/workers.py).
    workers: int = 1


@dataclass(frozen=True)
class DatabaseConfig:
    # Empty: start an embedded PostgreSQL in {data_dir}/pgdata.
    url: str = ""
    pool_min_size: int = 2
    pool_max_size: int = 20
    # Seconds; a query that takes longer fails instead of hanging a request.
    command_timeout: float = 10.0
    connect_timeout: float = 5.0
    # For the serving process's own writes (meetings, counters, poll results). "on" (durable): a
    # create answers SUCCESS only once its routing record is on disk. "off" answers without waiting
    # for the WAL flush: a database crash can then forget creates that were answered SUCCESS.
    synchronous_commit: str = "on"


@dataclass(frozen=True)
class RedisConfig:
    # Empty: single-instance mode, nothing is shared through Redis.
    url: str = ""
    # Pub/sub channel of meeting events. Empty: derived from the database's identity (cluster,
    # database, schema), so deployments sharing one Redis never hear each other (pub/sub ignores
    # Redis DB numbers). Set it to the same value on every instance of one deployment.
    channel: str = ""


@dataclass(frozen=True)
class NodeDefaults:
    protocol: str = "https"
    port: int = 443
    bbb_endpoint: str = "bigbluebutton/api/"
    load_endpoint: str = "b3lb/load"


@dataclass(frozen=True)
class ApiConfig:
    allowed_sha_algorithms: list[str] = field(default_factory=lambda: list(SHA_ALGORITHMS))
    # Seconds for one request to a node (connect + answer).
    node_connect_timeout: float = 3.0
    node_request_timeout: float = 10.0
    max_node_connections: int = 256
    # Largest answer (after decompression) read from a node; a larger one fails the request.
    max_node_answer_bytes: int = 64 * 1024 * 1024
    # PEM file of a private CA that signs the nodes' certificates (trusted besides the system's CAs).
    node_ca_file: str = ""
    # Nodes a new meeting's create is tried on when a node certainly failed it (refused, 5xx,
    # unusable or internalError answer). A create sent but not answered in time is never retried.
    create_attempts: int = 3
    # Answer authentication failures with B3LB's 401 instead of BBB's checksumError XML.
    legacy_401_on_auth_failure: bool = False
    # Answer a join for an unknown meeting with B3LB's empty 400.
    legacy_400_on_unknown_join: bool = False
    # Add messageKeys noNodeAvailable / limitReached to B3LB's key-less failures.
    add_message_keys: bool = False
    # Seconds between flushes of in-memory join counters to the database.
    counter_flush_interval: float = 5.0
    # Seconds between refreshes of the in-memory tenant/secret/node maps from the database.
    cache_refresh_interval: float = 5.0


@dataclass(frozen=True)
class PollerConfig:
    interval: float = 10.0
    jitter: float = 1.0
    timeout: float = 5.0
    concurrency: int = 100
    # A node goes to error after this many failed polls in a row, and back after recover_after good ones.
    error_after: int = 2
    recover_after: int = 2
    # A node whose poll in a cycle found the connection refused or dropped is polled again at once (not a
    # whole interval later), so a dead node goes to error, and its meetings fail over, about one interval
    # after it died. A timeout waits for the next cycle (a busy node must not go to error at once).
    probe_failed: bool = True
    # Seconds a new meeting is protected from removal by a poll that raced with its create.
    meeting_grace: float = 15.0
    metrics_retention_days: int = 30


@dataclass(frozen=True)
class MetricsConfig:
    # Authorization token of the global /b3lb/metrics view (all tenants and nodes), from any host.
    # Empty: the global view is closed (401); tenants still read theirs with their stats token.
    admin_token: str = ""


@dataclass(frozen=True)
class CallbacksConfig:
    # CIDRs that tenant-supplied callback URLs may reach although they are loopback, private,
    # link-local or reserved (b3lb/urlguard.py). Empty: only public addresses.
    allowed_networks: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RecordingsConfig:
    # Where archives and videos live: "local" (a folder) or "s3" (S3-compatible object storage).
    storage: str = "local"
    # local: the folder; empty means {server.data_dir}/recordings.
    local_path: str = ""
    # s3: endpoint URL (e.g. "https://s3.example.org"), bucket, credentials, region and key prefix.
    s3_endpoint: str = ""
    s3_bucket: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_region: str = "us-east-1"
    s3_prefix: str = ""
    # Bytes of one node upload (the archive plus its metadata.xml); larger: 413.
    max_upload_bytes: int = 10 * 1024**3
    # Seconds a node may take to send one upload's body.
    upload_timeout: float = 3600.0
    # Seconds for one recording-ready callback request; a failed one is retried after
    # callback_backoff seconds, doubled each time up to one hour, callback_attempts times in all.
    callback_timeout: float = 10.0
    callback_backoff: float = 30.0
    callback_attempts: int = 15
    # Seconds between housekeeping runs (retention, unfinished deletions, stale temporary files).
    housekeeping_interval: float = 300.0
    # Days a record set may wait for its node's upload and its rendering before housekeeping gives
    # up on it (its hold time starts only once it is rendered).
    pending_days: int = 7


@dataclass(frozen=True)
class RenderConfig:
    # Run one render worker inside `b3lb serve` (the single-machine set-up); `b3lb render` runs more.
    embedded: bool = True
    # Jobs one worker renders at once, and ffmpeg threads per job (0: ffmpeg decides).
    concurrency: int = 1
    threads: int = 0
    # Seconds a claimed job stays a worker's without a heartbeat (then another worker takes it
    # again), and seconds between heartbeats.
    lease_seconds: float = 60.0
    heartbeat_seconds: float = 15.0
    # Attempts per job; a failed one is tried again after backoff_seconds, doubled each time.
    max_attempts: int = 3
    backoff_seconds: float = 60.0
    # ffmpeg binary (a path or a name on PATH). Empty: `ffmpeg` on PATH, else imageio-ffmpeg's.
    ffmpeg: str = ""
    # Scratch folder of the jobs (archive, extracted files, videos). Empty: {server.data_dir}/render.
    work_dir: str = ""
    # Caps on an archive's extracted bytes and files; a larger archive fails its job.
    max_archive_bytes: int = 16 * 1024**3
    max_archive_files: int = 100_000


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    node_defaults: NodeDefaults = field(default_factory=NodeDefaults)
    api: ApiConfig = field(default_factory=ApiConfig)
    poller: PollerConfig = field(default_factory=PollerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    recordings: RecordingsConfig = field(default_factory=RecordingsConfig)
    render: RenderConfig = field(default_factory=RenderConfig)

    @property
    def public_base_url(self) -> str:
        return f"{self.server.public_scheme}://{self.server.api_base_domain}"


def _coerce(key: str, value: Any, expected: type | str, *, from_env: bool = False) -> Any:
    """Check (file values) or convert (environment strings) one value to the declared type."""
    kind = expected if isinstance(expected, str) else expected.__name__
    from_env = from_env and isinstance(value, str) and kind != "str"
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if from_env and value.lower() in ("1", "true", "yes", "on"):
                return True
            if from_env and value.lower() in ("0", "false", "no", "off"):
                return False
        elif kind == "int":
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if from_env:
                return int(value)
        elif kind == "float":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if from_env:
                return float(value)
        elif kind == "str":
            if isinstance(value, str):
                return value
        elif kind == "list[str]":
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
            if from_env:
                return [v.strip() for v in value.split(",") if v.strip()]
    except ValueError:
        pass
    raise ConfigError(f"{key}: expected {kind}, got {value!r}")


def _section_types(cls: type) -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(cls)}


def _build(raw: Mapping[str, Any], env: Mapping[str, str]) -> Config:
    sections: dict[str, Any] = {}
    top_types = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]
    for name in raw:
        if name not in top_types:
            raise ConfigError(f"unknown section [{name}]")
        if not isinstance(raw[name], dict):
            raise ConfigError(f"{name}: expected a [{name}] table")
    for section, factory in top_types.items():
        cls = type(factory())
        types = _section_types(cls)
        values: dict[str, Any] = {}
        for key, value in raw.get(section, {}).items():
            if key not in types:
                raise ConfigError(f"unknown setting {section}.{key}")
            values[key] = _coerce(f"{section}.{key}", value, types[key])
        for key, kind in types.items():
            env_name = f"B3LB_{section}_{key}".upper()
            if env_name in env:
                values[key] = _coerce(env_name, env[env_name], kind, from_env=True)
        sections[section] = cls(**values)
    config = Config(**sections)
    if env.get("DATABASE_URL"):
        config = dataclasses.replace(
            config, database=dataclasses.replace(config.database, url=env["DATABASE_URL"])
        )
    if env.get("REDIS_URL"):
        config = dataclasses.replace(config, redis=dataclasses.replace(config.redis, url=env["REDIS_URL"]))
    _validate(config)
    return config


def _validate(config: Config) -> None:
    for algorithm in config.api.allowed_sha_algorithms:
        if algorithm not in SHA_ALGORITHMS:
            raise ConfigError(f"api.allowed_sha_algorithms: unknown algorithm {algorithm!r}")
    if config.server.public_scheme not in ("http", "https"):
        raise ConfigError("server.public_scheme: must be http or https")
    if config.node_defaults.protocol not in ("http", "https"):
        raise ConfigError("node_defaults.protocol: must be http or https")
    _validate_node_defaults(config.node_defaults)
    if not 0 <= config.server.port <= 65535:
        raise ConfigError("server.port: must be between 0 and 65535")
    if not 1 <= config.server.workers <= MAX_WORKERS:
        raise ConfigError(f"server.workers: must be between 1 and {MAX_WORKERS}")
    if config.server.workers > 1 and config.server.port == 0:
        raise ConfigError("server.port: cannot be 0 (any free port) with server.workers > 1: workers share one port")
    if not 1024 <= config.server.max_header_size <= 16 * 1024 * 1024 or config.server.max_body_size < 0:
        raise ConfigError("server.max_header_size / max_body_size: 1 KiB to 16 MiB of head, a body size >= 0")
    if min(config.server.header_timeout, config.server.body_timeout, config.server.idle_timeout) <= 0:
        raise ConfigError("server.header_timeout / body_timeout / idle_timeout: must be more than 0 seconds")
    _validate_admin_token(config.metrics.admin_token)
    if config.server.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"server.log_level: unknown level {config.server.log_level!r}")
    if config.database.pool_min_size < 0 or config.database.pool_max_size < 1:
        raise ConfigError("database.pool_max_size: must be at least 1")
    if config.database.synchronous_commit not in ("on", "off", "local", "remote_write", "remote_apply"):
        raise ConfigError("database.synchronous_commit: must be on, off, local, remote_write or remote_apply")
    if not 1 <= config.api.create_attempts <= 10:
        raise ConfigError("api.create_attempts: must be between 1 and 10")
    channel = config.redis.channel
    if len(channel) > 200 or not all(c.isprintable() and not c.isspace() for c in channel):
        raise ConfigError("redis.channel: at most 200 printable characters without spaces")
    if config.poller.error_after < 1 or config.poller.recover_after < 1:
        raise ConfigError("poller.error_after / poller.recover_after: must be at least 1")
    _validate_node_client(config)
    _validate_recordings(config.recordings)
    _validate_render(config.render)


def parse_workers(text: str) -> int:
    """`b3lb serve --workers N`."""
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise ValueError(f"expected a number from 1 to {MAX_WORKERS}, got {text!r}")
    return int(text)


def _validate_recordings(rec: RecordingsConfig) -> None:
    if rec.storage not in ("local", "s3"):
        raise ConfigError("recordings.storage: must be local or s3")
    if rec.storage == "s3" and not (rec.s3_endpoint and rec.s3_bucket):
        raise ConfigError("recordings.s3_endpoint / s3_bucket: required when recordings.storage is s3")
    if rec.max_upload_bytes < 1024 * 1024:
        raise ConfigError("recordings.max_upload_bytes: must be at least 1 MiB")
    if min(rec.upload_timeout, rec.callback_timeout, rec.callback_backoff, rec.housekeeping_interval) <= 0:
        raise ConfigError("recordings: timeouts, back-off and intervals must be more than 0 seconds")
    if not 1 <= rec.callback_attempts <= 100:
        raise ConfigError("recordings.callback_attempts: must be between 1 and 100")
    if not 1 <= rec.pending_days <= 3650:
        raise ConfigError("recordings.pending_days: must be between 1 and 3650")


def _validate_render(render: RenderConfig) -> None:
    import shutil

    if not 1 <= render.concurrency <= 64:
        raise ConfigError("render.concurrency: must be between 1 and 64")
    if not 0 <= render.threads <= 256:
        raise ConfigError("render.threads: must be between 0 (ffmpeg decides) and 256")
    if not 5 <= render.lease_seconds <= 86400:
        raise ConfigError("render.lease_seconds: must be between 5 and 86400 seconds")
    if not 0 < render.heartbeat_seconds <= render.lease_seconds / 2:
        raise ConfigError("render.heartbeat_seconds: must be more than 0 and at most half of render.lease_seconds "
                          "(a lease must outlive a missed heartbeat)")
    if not 1 <= render.max_attempts <= 100:
        raise ConfigError("render.max_attempts: must be between 1 and 100")
    if not 0 < render.backoff_seconds <= 86400:
        raise ConfigError("render.backoff_seconds: must be more than 0 and at most 86400 seconds")
    if render.ffmpeg and shutil.which(render.ffmpeg) is None:
        raise ConfigError(f"render.ffmpeg: {render.ffmpeg!r} is not an executable file or a program on PATH")
    if render.max_archive_bytes < 1024 * 1024 or not 10 <= render.max_archive_files <= 10_000_000:
        raise ConfigError("render.max_archive_bytes / max_archive_files: at least 1 MiB, and 10 to 10000000 files")


def _validate_node_client(config: Config) -> None:
    if config.api.max_node_answer_bytes < 1024:
        raise ConfigError("api.max_node_answer_bytes: must be at least 1024")
    if config.api.max_node_connections < 1:
        raise ConfigError("api.max_node_connections: must be at least 1")
    if config.api.node_ca_file and not Path(config.api.node_ca_file).is_file():
        raise ConfigError(f"api.node_ca_file: no such file {config.api.node_ca_file!r}")
    for cidr in config.callbacks.allowed_networks:
        try:
            ipaddress.ip_network(cidr.strip(), strict=False)  # as b3lb.urlguard.parse_networks reads it
        except ValueError:
            raise ConfigError(f"callbacks.allowed_networks: not a network: {cidr!r}") from None


def _validate_node_defaults(defaults: NodeDefaults) -> None:
    """The values `b3lb node add` stores when no option is given obey the same rules as the options."""
    from b3lb import validation as v  # imports nothing of b3lb: no cycle

    rules = {"port": v.PORT, "bbb_endpoint": v.BBB_ENDPOINT, "load_endpoint": v.LOAD_ENDPOINT}
    for key, rule in rules.items():
        try:
            rule.check(getattr(defaults, key))
        except ValueError as exc:
            raise ConfigError(f"node_defaults.{key}: {exc}") from None


def _validate_admin_token(token: str) -> None:
    """Empty (the global metrics view is closed), or a secret fit for an Authorization header."""
    if token and (len(token) < 16 or not all("!" <= c <= "~" for c in token)):
        raise ConfigError("metrics.admin_token: at least 16 printable ASCII characters without spaces "
                          "(e.g. from `openssl rand -hex 32`), or empty")


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load the file (explicit path, else $B3LB_CONFIG, else conf/b3lb.conf if present) plus env."""
    env = os.environ if env is None else env
    explicit = path is not None or bool(env.get("B3LB_CONFIG"))
    chosen = Path(path or env.get("B3LB_CONFIG") or DEFAULT_CONFIG_PATH)
    raw: dict[str, Any] = {}
    if chosen.exists():
        try:
            raw = tomllib.loads(chosen.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{chosen}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{chosen}: cannot read: {exc.strerror}") from None
    elif explicit:
        raise ConfigError(f"{chosen}: no such configuration file")
    return _build(raw, env)

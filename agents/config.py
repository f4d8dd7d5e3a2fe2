"""Configuration: one table of settings, each with a flag, an environment variable and a default.

The table below is the single source: the CLI builds its flags from it, ``Settings.from_env``
reads the environment from it, and ``runstream config --markdown`` prints the README's table.
Precedence: flag > environment variable > default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["OPTIONS", "Option", "Settings", "add_flags", "markdown_table"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Option:
    field: str
    flag: str
    env: str
    default: Any
    help: str
    parse: Callable[[str], Any] = str
    secret: bool = False


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {s!r}")


OPTIONS: tuple[Option, ...] = (
    Option(
        field="kafka",
        flag="--kafka",
        env="RUNSTREAM_KAFKA_BOOTSTRAP",
        default="127.0.0.1:9092",
        help="Kafka bootstrap servers, host:port[,host:port]",
    ),
    Option(
        field="etcd",
        flag="--etcd",
        env="RUNSTREAM_ETCD_ENDPOINT",
        default="127.0.0.1:2379",
        help="etcd endpoint, host:port",
    ),
    Option(
        field="etcd_prefix",
        flag="--etcd-prefix",
        env="RUNSTREAM_ETCD_PREFIX",
        default="/runstream/",
        help="prefix of every etcd key runstream writes",
    ),
    Option(
        field="storage",
        flag="--storage",
        env="RUNSTREAM_STORAGE",
        default="file://./var/objects",
        help="object storage: file:///path or s3://bucket?endpoint=http://host:port",
    ),
    Option(
        field="s3_access_key",
        flag="--s3-access-key",
        env="RUNSTREAM_S3_ACCESS_KEY",
        default="runstream",
        help="S3 access key (s3:// storage only)",
    ),
    Option(
        field="s3_secret_key",
        flag="--s3-secret-key",
        env="RUNSTREAM_S3_SECRET_KEY",
        default="runstream-secret",
        help="S3 secret key (s3:// storage only)",
        secret=True,
    ),
    Option(
        field="app_id",
        flag="--app-id",
        env="RUNSTREAM_APP_ID",
        default="runstream",
        help="Faust application id: the consumer group and the prefix of internal topics",
    ),
    Option(
        field="topic_events",
        flag="--topic-events",
        env="RUNSTREAM_TOPIC_EVENTS",
        default="runs.events",
        help="input topic of run events (key = run id)",
    ),
    Option(
        field="topic_setup_errors",
        flag="--topic-setup-errors",
        env="RUNSTREAM_TOPIC_SETUP_ERRORS",
        default="runs.setup-errors",
        help="input topic of setup-error reports",
    ),
    Option(
        field="topic_phases",
        flag="--topic-phases",
        env="RUNSTREAM_TOPIC_PHASES",
        default="runs.phases",
        help="output topic of derived run.phase_changed events",
    ),
    Option(
        field="topic_dlq",
        flag="--topic-dlq",
        env="RUNSTREAM_TOPIC_DLQ",
        default="runs.dlq",
        help="dead-letter topic: original bytes plus error headers",
    ),
    Option(
        field="partitions",
        flag="--partitions",
        env="RUNSTREAM_PARTITIONS",
        default=4,
        parse=int,
        help="partitions of the runstream topics when they are created",
    ),
    Option(
        field="replication",
        flag="--replication",
        env="RUNSTREAM_REPLICATION",
        default=1,
        parse=int,
        help="replication factor of the runstream topics when they are created",
    ),
    Option(
        field="checkpoint_interval",
        flag="--checkpoint-interval",
        env="RUNSTREAM_CHECKPOINT_INTERVAL",
        default=5.0,
        parse=float,
        help="seconds between checkpoints of a partition with changes",
    ),
    Option(
        field="checkpoint_events",
        flag="--checkpoint-events",
        env="RUNSTREAM_CHECKPOINT_EVENTS",
        default=50_000,
        parse=int,
        help="events applied to a partition that force a checkpoint",
    ),
    Option(
        field="max_event_bytes",
        flag="--max-event-bytes",
        env="RUNSTREAM_MAX_EVENT_BYTES",
        default=1 << 20,
        parse=int,
        help="records larger than this go to the dead-letter topic",
    ),
    Option(
        field="max_file_size",
        flag="--max-file-size",
        env="RUNSTREAM_MAX_FILE_SIZE",
        default=8 << 20,
        parse=int,
        help="data files are split above this size (bytes)",
    ),
    Option(
        field="index_dump_interval",
        flag="--index-dump-interval",
        env="RUNSTREAM_INDEX_DUMP_INTERVAL",
        default=60.0,
        parse=float,
        help="seconds between index dumps (when the index changed)",
    ),
    Option(
        field="index_dump_changes",
        flag="--index-dump-changes",
        env="RUNSTREAM_INDEX_DUMP_CHANGES",
        default=100_000,
        parse=int,
        help="index changes that force a dump",
    ),
    Option(
        field="session_timeout",
        flag="--session-timeout",
        env="RUNSTREAM_SESSION_TIMEOUT",
        default=10.0,
        parse=float,
        help="seconds before the consumer group gives a silent worker's partitions to others",
    ),
    Option(
        field="web_host",
        flag="--web-host",
        env="RUNSTREAM_WEB_HOST",
        default="127.0.0.1",
        help="address the HTTP API and /metrics bind to",
    ),
    Option(
        field="web_port",
        flag="--web-port",
        env="RUNSTREAM_WEB_PORT",
        default=6066,
        parse=int,
        help="port of the HTTP API and /metrics",
    ),
    Option(
        field="advertised_url",
        flag="--advertised-url",
        env="RUNSTREAM_ADVERTISED_URL",
        default="",
        help="URL where the other workers reach this worker's API (relay to a run's owner); "
        "empty: http://<web host, or this machine's name when binding all addresses>:<web port>",
    ),
    Option(
        field="apply_timeout",
        flag="--apply-timeout",
        env="RUNSTREAM_APPLY_TIMEOUT",
        default=10.0,
        parse=float,
        help="seconds an API write waits for the owner's materializer to apply its event (then 503)",
    ),
    Option(
        field="api_token",
        flag="--api-token",
        env="RUNSTREAM_API_TOKEN",
        default="",
        help="when set, every API request but /healthz and /metrics needs "
        "'Authorization: Bearer <token>'",
        secret=True,
    ),
    Option(
        field="max_body_bytes",
        flag="--max-body-bytes",
        env="RUNSTREAM_MAX_BODY_BYTES",
        default=1 << 20,
        parse=int,
        help="API request bodies above this size get 413",
    ),
    Option(
        field="log_level",
        flag="--log-level",
        env="RUNSTREAM_LOG_LEVEL",
        default="info",
        help="debug, info, warning or error",
    ),
    Option(
        field="log_format",
        flag="--log-format",
        env="RUNSTREAM_LOG_FORMAT",
        default="json",
        help="json (one object per line) or text",
    ),
    Option(
        field="progress",
        flag="--progress",
        env="RUNSTREAM_PROGRESS",
        default=True,
        parse=_bool,
        help="show progress bars on long work (replay, dumps)",
    ),
    Option(
        field="events_retention_ms",
        flag="--events-retention-ms",
        env="RUNSTREAM_EVENTS_RETENTION_MS",
        default=-1,
        parse=int,
        help="retention.ms of the input topics (events, setup errors) when runstream creates "
        "them; -1 keeps the log whole, which replay needs",
    ),
    Option(
        field="max_running_per_group",
        flag="--max-running-per-group",
        env="RUNSTREAM_MAX_RUNNING_PER_GROUP",
        default=1,
        parse=int,
        help="the scheduler starts the oldest queued run of a group (its full path) while fewer "
        "than this many of its runs run; 0 turns the scheduler off",
    ),
)

_BY_FIELD = {o.field: o for o in OPTIONS}


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    kafka: str = "127.0.0.1:9092"
    etcd: str = "127.0.0.1:2379"
    etcd_prefix: str = "/runstream/"
    storage: str = "file://./var/objects"
    s3_access_key: str = "runstream"
    s3_secret_key: str = "runstream-secret"
    app_id: str = "runstream"
    topic_events: str = "runs.events"
    topic_setup_errors: str = "runs.setup-errors"
    topic_phases: str = "runs.phases"
    topic_dlq: str = "runs.dlq"
    partitions: int = 4
    replication: int = 1
    checkpoint_interval: float = 5.0
    checkpoint_events: int = 50_000
    max_event_bytes: int = 1 << 20
    max_file_size: int = 8 << 20
    index_dump_interval: float = 60.0
    index_dump_changes: int = 100_000
    session_timeout: float = 10.0
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    advertised_url: str = ""
    apply_timeout: float = 10.0
    api_token: str = ""
    max_body_bytes: int = 1 << 20
    log_level: str = "info"
    log_format: str = "json"
    progress: bool = True
    events_retention_ms: int = -1
    max_running_per_group: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Defaults overridden by the environment. Raises ``ValueError`` naming a bad variable."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for opt in OPTIONS:
            raw = environ.get(opt.env)
            if raw is not None and raw != "":
                try:
                    values[opt.field] = opt.parse(raw)
                except ValueError as exc:
                    raise ValueError(f"{opt.env}={raw!r}: {exc}") from exc
        return cls(**values)

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None
    ) -> Settings:
        base = cls.from_env(environ)
        given = {
            f.name: getattr(args, f.name)
            for f in fields(cls)
            if getattr(args, f.name, None) is not None
        }
        return replace(base, **given)

    def public(self) -> dict[str, Any]:
        """The settings with secrets masked, for logs and ``runstream config``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = "***" if _BY_FIELD[f.name].secret and value else value
        return out


def add_flags(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """Add the flags of ``names`` (all when None); unset flags stay None so env and defaults apply."""
    for opt in OPTIONS:
        if names is not None and opt.field not in names:
            continue
        parser.add_argument(
            opt.flag,
            dest=opt.field,
            type=opt.parse,
            default=None,
            metavar=opt.field.upper().split("_")[-1],
            help=f"{opt.help} (env {opt.env}, default {opt.default!r})",
        )


def markdown_table() -> str:
    rows = ["| flag | environment variable | default | meaning |", "| --- | --- | --- | --- |"]
    for o in OPTIONS:
        rows.append(f"| `{o.flag}` | `{o.env}` | `{o.default}` | {o.help} |")
    return "\n".join(rows)

"""Configuration: every setting declared once, as a field of :class:`Settings`.

A field's ``setting(...)`` names its environment variable, its help text and (derived from the
field name unless given) its flag; its type gives the parser. From these declarations come the
CLI's flags (:func:`add_flags`), :meth:`Settings.from_env`, ``runstream config`` and the README's
table (``runstream config --markdown``). Precedence: flag > environment variable > default.
A few defaults follow other variables, so that one set of variables moves the services and
points runstream at them: ``kafka`` and ``etcd`` use ``RUNSTREAM_KAFKA_PORT`` /
``RUNSTREAM_ETCD_PORT`` (what ``deploy/local`` reads) when their own variable is unset, and
``url`` (the runs commands' API) is this configuration's own worker.

To add a setting: add a field with ``setting(...)`` at the end of :class:`Settings`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["OPTIONS", "Option", "Settings", "add_flags", "markdown_table", "setting"]

#: Computes a default from the environment and the settings resolved before it (or None).
Derive = Callable[[Mapping[str, str], Mapping[str, Any]], Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Option:
    """One setting as the CLI and the environment see it (made from a field's declaration)."""

    field: str
    flag: str
    env: str
    default: Any
    help: str
    parse: Callable[[str], Any] = str
    secret: bool = False
    client: bool = False  # a setting of the API client (runs commands), not of the worker
    derive: Derive | None = None


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {s!r}")


_PARSERS: dict[str, Callable[[str], Any]] = {"str": str, "int": int, "float": float, "bool": _bool}
_META = "runstream"


def setting(
    default: Any,
    *,
    env: str,
    help: str,
    flag: str | None = None,
    secret: bool = False,
    client: bool = False,
    derive: Derive | None = None,
) -> Any:
    """A field of :class:`Settings` with its variable, help text, flag (``--<field-name>``
    unless given) and, if any, a default derived from other variables."""
    meta = {"env": env, "help": help, "flag": flag, "secret": secret, "client": client}
    return field(default=default, metadata={_META: {**meta, "derive": derive}})


def _host_port(port_variable: str) -> Derive:
    def derive(environ: Mapping[str, str], _: Mapping[str, Any]) -> str | None:
        port = environ.get(port_variable)
        return f"127.0.0.1:{int(port)}" if port else None

    return derive


def _own_url(_: Mapping[str, str], resolved: Mapping[str, Any]) -> str:
    host = resolved.get("web_host", "127.0.0.1")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{resolved.get('web_port', 6066)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    kafka: str = setting(
        "127.0.0.1:9092",
        env="RUNSTREAM_KAFKA_BOOTSTRAP",
        derive=_host_port("RUNSTREAM_KAFKA_PORT"),
        help="Kafka bootstrap servers, host:port[,host:port]; default "
        "127.0.0.1:$RUNSTREAM_KAFKA_PORT when that is set (deploy/local's port)",
    )
    etcd: str = setting(
        "127.0.0.1:2379",
        env="RUNSTREAM_ETCD_ENDPOINT",
        derive=_host_port("RUNSTREAM_ETCD_PORT"),
        help="etcd endpoint, host:port; default 127.0.0.1:$RUNSTREAM_ETCD_PORT when that is "
        "set (deploy/local's port)",
    )
    etcd_prefix: str = setting(
        "/runstream/",
        env="RUNSTREAM_ETCD_PREFIX",
        help="prefix of every etcd key runstream writes",
    )
    storage: str = setting(
        "file://./var/objects",
        env="RUNSTREAM_STORAGE",
        help="object storage: file:///path or s3://bucket?endpoint=http://host:port",
    )
    s3_access_key: str = setting(
        "runstream",
        env="RUNSTREAM_S3_ACCESS_KEY",
        help="S3 access key (s3:// storage only)",
    )
    s3_secret_key: str = setting(
        "runstream-secret",
        env="RUNSTREAM_S3_SECRET_KEY",
        secret=True,
        help="S3 secret key (s3:// storage only)",
    )
    app_id: str = setting(
        "runstream",
        env="RUNSTREAM_APP_ID",
        help="Faust application id: the consumer group and the prefix of internal topics",
    )
    topic_events: str = setting(
        "runs.events",
        env="RUNSTREAM_TOPIC_EVENTS",
        help="input topic of run events (key = run id)",
    )
    topic_setup_errors: str = setting(
        "runs.setup-errors",
        env="RUNSTREAM_TOPIC_SETUP_ERRORS",
        help="input topic of setup-error reports",
    )
    topic_phases: str = setting(
        "runs.phases",
        env="RUNSTREAM_TOPIC_PHASES",
        help="output topic of derived run.phase_changed events",
    )
    topic_dlq: str = setting(
        "runs.dlq",
        env="RUNSTREAM_TOPIC_DLQ",
        help="dead-letter topic: original bytes plus error headers",
    )
    partitions: int = setting(
        4,
        env="RUNSTREAM_PARTITIONS",
        help="partitions of the runstream topics when they are created",
    )
    replication: int = setting(
        1,
        env="RUNSTREAM_REPLICATION",
        help="replication factor of the runstream topics when they are created",
    )
    checkpoint_interval: float = setting(
        5.0,
        env="RUNSTREAM_CHECKPOINT_INTERVAL",
        help="seconds between checkpoints of a partition with changes",
    )
    checkpoint_events: int = setting(
        50_000,
        env="RUNSTREAM_CHECKPOINT_EVENTS",
        help="events applied to a partition that force a checkpoint",
    )
    max_event_bytes: int = setting(
        1 << 20,
        env="RUNSTREAM_MAX_EVENT_BYTES",
        help="records larger than this go to the dead-letter topic",
    )
    max_file_size: int = setting(
        8 << 20,
        env="RUNSTREAM_MAX_FILE_SIZE",
        help="data files are split above this size (bytes)",
    )
    index_dump_interval: float = setting(
        60.0,
        env="RUNSTREAM_INDEX_DUMP_INTERVAL",
        help="seconds between index dumps (when the index changed)",
    )
    index_dump_changes: int = setting(
        100_000,
        env="RUNSTREAM_INDEX_DUMP_CHANGES",
        help="index changes that force a dump",
    )
    session_timeout: float = setting(
        10.0,
        env="RUNSTREAM_SESSION_TIMEOUT",
        help="seconds before the consumer group gives a silent worker's partitions to others",
    )
    web_host: str = setting(
        "127.0.0.1",
        env="RUNSTREAM_WEB_HOST",
        help="address the HTTP API and /metrics bind to",
    )
    web_port: int = setting(
        6066,
        env="RUNSTREAM_WEB_PORT",
        help="port of the HTTP API and /metrics",
    )
    advertised_url: str = setting(
        "",
        env="RUNSTREAM_ADVERTISED_URL",
        help="URL where the other workers reach this worker's API (relay to a run's owner); "
        "empty: http://<web host, or this machine's name when binding all "
        "addresses>:<web port>",
    )
    apply_timeout: float = setting(
        10.0,
        env="RUNSTREAM_APPLY_TIMEOUT",
        help="seconds an API write waits for the owner's materializer to apply its event "
        "(then 503)",
    )
    api_token: str = setting(
        "",
        env="RUNSTREAM_API_TOKEN",
        secret=True,
        help="a token holding every scope (read, write, execute, admin); with any token "
        "configured every API request but /healthz, /metrics and /ui needs 'Authorization: "
        "Bearer <token>', and the API may bind a non-loopback address",
    )
    max_body_bytes: int = setting(
        1 << 20,
        env="RUNSTREAM_MAX_BODY_BYTES",
        help="API request bodies above this size get 413",
    )
    log_level: str = setting(
        "info",
        env="RUNSTREAM_LOG_LEVEL",
        help="debug, info, warning or error",
    )
    log_format: str = setting(
        "json",
        env="RUNSTREAM_LOG_FORMAT",
        help="json (one object per line) or text",
    )
    progress: bool = setting(
        True,
        env="RUNSTREAM_PROGRESS",
        help="show progress bars on long work (replay, dumps)",
    )
    events_retention_ms: int = setting(
        -1,
        env="RUNSTREAM_EVENTS_RETENTION_MS",
        help="retention.ms of the input topics (events, setup errors) when runstream "
        "creates them; -1 keeps the log whole, which replay needs",
    )
    max_running_per_group: int = setting(
        1,
        env="RUNSTREAM_MAX_RUNNING_PER_GROUP",
        help="the scheduler starts the oldest queued run of a group (its full path) while "
        "fewer than this many of its runs run; 0 turns the scheduler off",
    )
    topic_requests: str = setting(
        "runs.requests",
        env="RUNSTREAM_TOPIC_REQUESTS",
        help="input topic of creation requests: runs without an id, which runstream allocates "
        "(key = request id; docs/events.md)",
    )
    topic_replies: str = setting(
        "runs.replies",
        env="RUNSTREAM_TOPIC_REPLIES",
        help="output topic of the replies to creation requests and setup-error reports: "
        "request id → run id, or why it was refused (key = request id)",
    )
    url: str = setting(
        "",
        env="RUNSTREAM_URL",
        client=True,
        derive=_own_url,
        help="API base URL the runs commands talk to; default http://127.0.0.1:<web port> "
        "(RUNSTREAM_WEB_PORT), the worker this configuration starts",
    )
    topic_heartbeats: str = setting(
        "runs.heartbeats",
        env="RUNSTREAM_TOPIC_HEARTBEATS",
        help="executors' heartbeats (key = executor id; compacted, kept one day): every worker "
        "reads all of it to know which executors are alive (docs/events.md)",
    )
    topic_refusals: str = setting(
        "runs.refusals",
        env="RUNSTREAM_TOPIC_REFUSALS",
        help="output topic of the answers to refused events: event id, run id, refusal code "
        "and reason (key = run id, the run's partition number; docs/events.md)",
    )
    stuck_after: float = setting(
        600.0,
        env="RUNSTREAM_STUCK_AFTER",
        help="seconds without progress after which an active run counts as stuck (the "
        "runstream_stuck_runs metric; `runstream runs stuck` takes its own threshold)",
    )
    creation_key_retention: float = setting(
        86400.0,
        env="RUNSTREAM_CREATION_KEY_RETENTION",
        help="seconds at least a creation key (an Idempotency-Key of POST /runs, a request id "
        "of runs.requests) stays bound to its run in etcd, so a retry gets the same run; 0: "
        "kept for ever (docs/api.md)",
    )
    api_tokens: str = setting(
        "",
        env="RUNSTREAM_API_TOKENS",
        secret=True,
        help="API tokens with their scopes: 'token:scope+scope;token2:scope' (scopes read, "
        "write, execute, admin; only execute is shown environment values; docs/api.md)",
    )
    api_tokens_file: str = setting(
        "",
        env="RUNSTREAM_API_TOKENS_FILE",
        help="file of API tokens read at start, one per line: '<token> <scope>[,<scope>...]' "
        "('#' starts a comment line)",
    )
    cluster_secret: str = setting(
        "",
        env="RUNSTREAM_CLUSTER_SECRET",
        secret=True,
        help="secret the workers sign their relayed requests with (X-Runstream-* headers); "
        "empty: one generated at the first start and kept in etcd under the prefix",
    )
    topic_tasks: str = setting(
        "runs.tasks",
        env="RUNSTREAM_TOPIC_TASKS",
        help="output topic of the derived task.ready events, which executors follow (key = run "
        "id, the run's partition number; docs/events.md)",
    )
    produce_in_flight: int = setting(
        1,
        env="RUNSTREAM_PRODUCE_IN_FLIGHT",
        help="produce requests a worker's producers may have in flight to one broker at once, "
        "each for other partitions (Kafka's max.in.flight.requests.per.connection; a "
        "partition has one at most, whatever this is)",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Defaults overridden by the environment. Raises ``ValueError`` naming a bad variable."""
        return cls(**_resolve(os.environ if environ is None else environ, {}))

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None
    ) -> Settings:
        given = {
            o.field: getattr(args, o.field)
            for o in OPTIONS
            if getattr(args, o.field, None) is not None
        }
        return cls(**_resolve(os.environ if environ is None else environ, given))

    def public(self) -> dict[str, Any]:
        """The settings with secrets masked, for logs and ``runstream config``."""
        out: dict[str, Any] = {}
        for o in OPTIONS:
            value = getattr(self, o.field)
            out[o.field] = "***" if o.secret and value else value
        return out


def _options() -> tuple[Option, ...]:
    out = []
    for f in fields(Settings):
        meta = f.metadata[_META]
        out.append(
            Option(
                field=f.name,
                flag=meta["flag"] or "--" + f.name.replace("_", "-"),
                env=meta["env"],
                default=f.default,
                help=meta["help"],
                parse=_PARSERS[str(f.type)],
                secret=meta["secret"],
                client=meta["client"],
                derive=meta["derive"],
            )
        )
    return tuple(out)


#: Every setting, in declaration order (made from :class:`Settings`' fields).
OPTIONS: tuple[Option, ...] = _options()


def _resolve(environ: Mapping[str, str], given: Mapping[str, Any]) -> dict[str, Any]:
    """Flags in ``given``, else the variable, else a derived default; in declaration order, so a
    derived default sees the settings before it. Raises ``ValueError`` naming a bad variable."""
    values: dict[str, Any] = {}
    resolved: dict[str, Any] = {}
    for opt in OPTIONS:
        raw = environ.get(opt.env)
        if opt.field in given:
            values[opt.field] = given[opt.field]
        elif raw is not None and raw != "":
            try:
                values[opt.field] = opt.parse(raw)
            except ValueError as exc:
                raise ValueError(f"{opt.env}={raw!r}: {exc}") from exc
        elif opt.derive is not None:
            try:
                derived = opt.derive(environ, resolved)
            except ValueError as exc:
                raise ValueError(f"default of {opt.env}: {exc}") from exc
            if derived is not None:
                values[opt.field] = derived
        resolved[opt.field] = values.get(opt.field, opt.default)
    return values


def add_flags(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """Add the flags of ``names`` (default: every worker setting, not the client's); unset flags
    stay None so that the environment and the defaults apply."""
    for opt in OPTIONS:
        if opt.client if names is None else opt.field not in names:
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

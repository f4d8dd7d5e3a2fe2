"""Structured logs: one JSON object per line (or plain text), on stderr."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

__all__ = [
    "LIBRARY_LOGGERS",
    "PAYLOAD_LOGGERS",
    "JsonFormatter",
    "TextFormatter",
    "quiet_libraries",
    "setup_logging",
]

#: Loggers of the client libraries whose lines a CLI command keeps off its output (not the
#: worker's: there they are part of the service's log).
LIBRARY_LOGGERS = ("aiokafka", "kafka", "botocore", "boto3", "urllib3", "s3transfer")
#: Loggers whose debug output holds the bytes of records (and so run environments).
PAYLOAD_LOGGERS = ("aiokafka", "kafka", "faust.transport")

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra}``; extra fields come from ``logger.info(..., extra={})``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


#: Extra fields the text format puts first: why something was refused or failed.
TEXT_FIRST = ("reason", "code", "error")
#: A text line shows at most this many characters of one extra field's value.
TEXT_VALUE_CHARS = 300


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: MSG key=value ...``: the message, then every extra field (``reason``,
    ``code`` and ``error`` first), so a refusal's reason shows in the text format as in JSON.
    A value with spaces or quotes is quoted (JSON string rules)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if not extras:
            return line
        ordered = [k for k in TEXT_FIRST if k in extras] + sorted(
            k for k in extras if k not in TEXT_FIRST
        )
        pairs = " ".join(f"{k}={_text_value(extras[k])}" for k in ordered)
        head, sep, tail = line.partition("\n")  # a traceback stays below the line
        return f"{head} {pairs}{sep}{tail}"


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    if len(text) > TEXT_VALUE_CHARS:
        text = text[:TEXT_VALUE_CHARS] + "…"
    if isinstance(value, str) and (not text or any(c in text for c in ' "=\n\t')):
        return orjson.dumps(text).decode()
    return text


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The Kafka client's debug lines carry record payloads — a run's environment, which may hold
    # secrets — so they stay off even at --log-level debug (no log line carries those values).
    for name in PAYLOAD_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger(name).level))


def quiet_libraries(level: str) -> None:
    """Silence the client libraries' loggers unless ``level`` is ``debug``.

    For the CLI commands: a library's warning (aiokafka's about a missing topic or a reconnect)
    either becomes the command's own error message or does not concern its user. The logger
    levels outlive ``setup_logging``, which only replaces the root handler.
    """
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.INFO if level.lower() == "debug" else logging.CRITICAL + 1
        )

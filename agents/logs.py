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
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
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

"""Structured logs: one JSON object per line (or plain text), on stderr."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

__all__ = ["LIBRARY_LOGGERS", "JsonFormatter", "quiet_libraries", "setup_logging"]

#: Loggers of the client libraries whose lines a CLI command keeps off its output (not the
#: worker's: there they are part of the service's log).
LIBRARY_LOGGERS = ("aiokafka", "kafka", "botocore", "boto3", "urllib3", "s3transfer")

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


def quiet_libraries(level: str) -> None:
    """Silence the client libraries' loggers unless ``level`` is ``debug``.

    For the CLI commands: a library's warning (aiokafka's about a missing topic or a reconnect)
    either becomes the command's own error message or does not concern its user. The logger
    levels outlive ``setup_logging``, which only replaces the root handler.
    """
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.NOTSET if level.lower() == "debug" else logging.CRITICAL + 1
        )

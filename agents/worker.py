"""``runstream worker``: the Faust worker process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import faust

from agents.api_server import ApiServer
from agents.app import create_app
from agents.config import Settings
from agents.creation import SetupErrorService
from agents.health import fatal, on_fatal
from agents.indexing import IndexService
from agents.liveness import Executors
from agents.logs import setup_logging
from agents.materializer_service import MaterializerService
from agents.resources import Resources, ensure_topics
from agents.runtime import tune_gc, tune_malloc, watch_loop_lag
from agents.scheduler import SchedulerService

__all__ = ["EXIT_FATAL", "run_worker"]

#: Exit code of a worker stopped for a condition no retry cures (``agents.health.stop_for``:
#: an etcd pointer naming a manifest its storage does not hold).
EXIT_FATAL = 3
#: Seconds between such a condition and the stop: ``/healthz`` says it meanwhile.
FATAL_GRACE_SECONDS = 1.0

log = logging.getLogger("runstream.worker")


class _Worker(faust.Worker):
    runstream_settings: Settings

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        # Faust installs its own root handlers; keep runstream's structured logs instead.
        setup_logging(self.runstream_settings.log_level, self.runstream_settings.log_format)


def run_worker(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM. Returns the process exit code."""
    setup_logging(settings.log_level, settings.log_format)
    tune_gc()
    tune_malloc()  # before the threads: one heap, trimmed (agents.runtime.HeapTrimmer)
    try:
        asyncio.run(ensure_topics(settings))
    except Exception as exc:
        log.error("cannot prepare the topics", extra={"error": str(exc)})
        return 1
    resources = Resources(settings)
    index = IndexService(settings, resources)
    app = create_app(settings)
    # Heartbeats: the API appends them, every worker follows them all into a Liveness. The
    # partition owners judge leases with that table: it is the app's, as the topics are,
    # so the materializer's wiring (which gets the app) finds it at app.runstream_liveness.
    executors = Executors(settings)
    app.runstream_liveness = executors.liveness  # type: ignore[attr-defined]
    materializer = MaterializerService(app, settings, resources)
    SetupErrorService(app, settings, resources)
    api = ApiServer(
        settings,
        resources,
        materializer,
        index,
        app.router.external_topics_metadata,
        executors=executors,
    )
    app.task(index.run)
    app.task(lambda: watch_loop_lag())  # (Faust passes the app to a task taking arguments)
    app.task(api.run)
    app.task(executors.run)
    if settings.max_running_per_group > 0:
        app.task(SchedulerService(settings, resources, materializer, index).run)

    log.info("starting worker", extra={"settings": settings.public()})
    worker = _Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    worker.runstream_settings = settings
    # Faust's start-up spinner writes "\b\x1b[?25h" to stdout at its end even when stdout is no
    # terminal (quiet only silences its text); without it Faust logs "Ready" instead.
    worker.spinner = None

    def stop(line: str) -> None:  # stop as on SIGTERM: every service stops cleanly
        worker.loop.call_later(FATAL_GRACE_SECONDS, os.kill, os.getpid(), signal.SIGTERM)

    on_fatal(stop)
    try:
        worker.execute_from_commandline()
    except SystemExit:
        if fatal() is not None:
            return EXIT_FATAL
        raise
    return 0

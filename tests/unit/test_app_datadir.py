"""A worker's Faust app keeps its data directory out of the working directory."""

from __future__ import annotations

import tempfile
from pathlib import Path

from agents.app import create_app
from agents.config import Settings


def test_the_faust_data_directory_is_under_the_temporary_directory() -> None:
    app = create_app(Settings(app_id="datadir-test"))
    datadir = Path(app.conf.datadir).resolve()
    assert datadir.is_relative_to(Path(tempfile.gettempdir()).resolve())
    assert not datadir.is_relative_to(Path.cwd().resolve())
    assert datadir.name == "runstream-faust-datadir-test"

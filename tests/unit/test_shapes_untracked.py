"""Shapes are frozen and untracked by the cycle collector (events.model._KwOnly): what a worker
allocates for every event costs no collection, and reference counting frees it."""

from __future__ import annotations

import gc
import importlib
import pkgutil

import api
import events
import indexer
import partition
from events.catalogue import TaskStatusChanged, TaskStatusChangedEvent
from events.model import OpenShape, Shape, TaskStatus


def _all_subclasses(cls: type) -> set[type]:
    out: set[type] = set()
    for sub in cls.__subclasses__():
        out |= {sub, *_all_subclasses(sub)}
    return out


def test_every_shape_is_frozen_and_untracked() -> None:
    for package in (events, partition, api, indexer):  # every package that declares shapes
        for mod in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(mod.name)
    shapes = _all_subclasses(Shape) | _all_subclasses(OpenShape)
    assert len(shapes) > 20
    for cls in shapes:
        config = cls.__struct_config__  # type: ignore[attr-defined]
        assert config.frozen, cls
        assert not config.gc, cls


def test_a_dict_of_shapes_is_untracked_too() -> None:
    event = TaskStatusChangedEvent(
        version=1,
        id="e1",
        run_id="0000000000000001",
        at=1,
        data=TaskStatusChanged(task_id="t0", status=TaskStatus.SUCCESS),
    )
    assert not gc.is_tracked(event)
    held = {"e1": event}
    gc.collect()
    assert not gc.is_tracked(held)

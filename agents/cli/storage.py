"""``runstream storage ls | cat``: what runstream keeps in object storage, readable without code.

``ls [PREFIX]`` lists keys with their size and kind; ``cat KEY`` prints a manifest, a data file
(``.sst``, docs/datafile-format.md) or an index dump (``.rsix``, docs/index-format.md) as JSON
lines: a first line describing the object, then (data files and dumps) one line per entry,
``{"key": ..., "value": ...}`` with the value decoded. Read-only; works on posix and S3 alike,
through the storage settings (``--storage``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
from collections.abc import Iterator
from typing import Any

import orjson

import ost
from agents.config import Settings, add_flags
from agents.logs import setup_logging
from agents.resources import Resources
from datamanager import datafile
from datamanager.manifest import Manifest
from indexer import dump as index_dump
from indexer.keys import DUMP_SUFFIX
from partition.finals import FinalIds
from partition.materializer import FINAL_IDS

__all__ = ["add_storage_commands", "cat_lines", "kind_of"]


def kind_of(key: str) -> str:
    """``manifest``, ``datafile``, ``index-dump`` or ``other``, from the key alone."""
    if key.endswith(".sst") and "/data/" in key:
        return "datafile"
    if key.endswith(".json") and "/manifests/" in key:
        return "manifest"
    if key.endswith(DUMP_SUFFIX):
        return "index-dump"
    return "other"


def _datatype(key: str) -> str:
    """The datatype of a data file key ``<base>/<partition>/data/<datatype>/<name>.sst``."""
    head = key.rsplit("/", 2)
    return head[-2] if len(head) == 3 else ""


def _value(entry_id: str, raw: bytes) -> Any:
    """A data file value as JSON: run states are JSON already; the final-ids set is binary."""
    if entry_id == FINAL_IDS:
        try:
            ids = FinalIds.from_bytes(raw)
            return {"final_ids": len(ids), "ids": ids.sorted_ids().tolist()}
        except ValueError:
            pass
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"base64": base64.b64encode(raw).decode()}


def _datafile_lines(key: str, data: bytes) -> Iterator[dict[str, Any]]:
    footer = datafile.decode_footer(data)
    end = footer.index_offset + footer.index_length
    blocks = datafile.decode_index(data[footer.index_offset : end], footer.index_crc)
    yield {
        "kind": "datafile",
        "object": key,
        "datatype": _datatype(key),
        "size": len(data),
        "entries": footer.entry_count,
        "blocks": len(blocks),
        "meta": datafile.read_meta(data),
    }
    for entry_id, raw in datafile.decode_file(data):
        yield {"key": entry_id, "value": _value(entry_id, raw)}


def _dump_lines(key: str, data: bytes) -> Iterator[dict[str, Any]]:
    index, header = index_dump.decode(data)
    yield {
        "kind": "index-dump",
        "object": key,
        "version": header.version,
        "created_at": header.created_at,
        "offsets": header.offsets,
        "runs": header.runs,
        "groups": header.groups,
        "base": header.base,
        "span": header.span,
        "group_width": header.group_width,
        "seq_width": header.seq_width,
        "size": header.size,
        "raw_size": header.raw_size,
    }
    for e in index.entries():
        yield {
            "key": e.id,
            "value": {
                "group": e.group,
                "phase": str(e.phase),
                "result": str(e.result),
                "seq": index.get_seq(e.run_id),
                "name": e.name,
                "counter": e.counter,
                "enqueue_time": e.enqueue_time,
                "start_time": e.start_time,
                "end_time": e.end_time,
            },
        }


def cat_lines(key: str, data: bytes) -> Iterator[dict[str, Any]]:
    """The JSON lines ``cat`` prints for the object ``key`` holding ``data`` (pure).

    Raises ``datamanager.errors.CorruptData`` / ``indexer.BadDump`` for a damaged object, and
    ``ValueError`` for an object of no kind runstream writes."""
    kind = kind_of(key)
    if kind == "manifest":
        m = Manifest.decode(data)  # validates the shape
        yield {"kind": "manifest", "object": key, **orjson.loads(m.encode())}
    elif kind == "datafile":
        yield from _datafile_lines(key, data)
    elif kind == "index-dump":
        yield from _dump_lines(key, data)
    else:
        raise ValueError(f"{key}: not a manifest, data file or index dump")


def _print(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, default=str).decode() + "\n")


async def _ls(settings: Settings, prefix: str, as_json: bool) -> int:
    res = Resources(settings)
    try:
        store = await res.store()
        count = total = 0
        async for info in store.list(prefix):
            kind = kind_of(info.key)
            count += 1
            total += info.size
            if as_json:
                _print(
                    {
                        "key": info.key,
                        "size": info.size,
                        "kind": kind,
                        "last_modified": info.last_modified.isoformat(),
                    }
                )
            else:
                print(f"{info.size:>12,}  {kind:<10}  {info.key}")
        if not as_json:
            print(f"{count:,} objects, {total:,} bytes", file=sys.stderr)
        return 0
    finally:
        await res.close()


async def _cat(settings: Settings, key: str) -> int:
    res = Resources(settings)
    try:
        store = await res.store()
        try:
            data = await store.read(key)
        except ost.NotExist:
            print(f"runstream: error: no object {key!r} in {settings.storage}", file=sys.stderr)
            return 1
        lines = await asyncio.to_thread(lambda: list(cat_lines(key, data)))
        for line in lines:
            _print(line)
        return 0
    finally:
        await res.close()


def add_storage_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    storage = sub.add_parser(
        "storage",
        help="object storage: list keys, print manifests, data files and index dumps",
        description="Read what runstream keeps in object storage (--storage: posix or S3).",
    )
    ssub = storage.add_subparsers(dest="storage_command", metavar="COMMAND", required=True)
    ls = ssub.add_parser(
        "ls",
        help="list keys with size and kind",
        description="List the objects under PREFIX (all when omitted): size, kind, key.",
    )
    ls.add_argument(
        "prefix",
        nargs="?",
        default="",
        help="key prefix, e.g. runstream/rundata/ or runstream/index/ (the deployment's object prefix first)",
    )
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    add_flags(ls)
    ls.set_defaults(func=_command(lambda s, a: _ls(s, a.prefix, a.json)))
    cat = ssub.add_parser(
        "cat",
        help="print a manifest, data file or index dump as JSON lines",
        description="Print KEY as JSON lines: a line describing the object, then one line per "
        'entry {"key": ..., "value": ...} (data files and index dumps).',
    )
    cat.add_argument("key", help="object key, as `storage ls` prints it")
    add_flags(cat)
    cat.set_defaults(func=_command(lambda s, a: _cat(s, a.key)))


def _command(fn: Any) -> Any:
    def cmd(args: argparse.Namespace) -> int:
        settings = Settings.from_args(args)
        setup_logging(settings.log_level, settings.log_format)
        return int(asyncio.run(fn(settings, args)))

    return cmd

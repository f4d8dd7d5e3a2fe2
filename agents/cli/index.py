"""``runstream index stats | dump | verify``: the run index from outside a worker."""

from __future__ import annotations

import argparse
import asyncio

from agents import keys
from agents.config import Settings, add_flags
from agents.indexing import build_index
from agents.kafka import end_offsets
from agents.logs import setup_logging
from agents.resources import Resources
from datamanager import LeaseLock
from datamanager.keys import lock_key
from indexer import Dumper, DumpPolicy, DumpStore, compare

__all__ = ["add_index_commands"]


async def _stats(settings: Settings) -> int:
    res = Resources(settings)
    try:
        store = DumpStore(await res.store(), prefix=keys.index_prefix(settings.etcd_prefix))
        index, loaded = await build_index(settings, store)
        st = index.stats()
        print(f"runs            {st.runs:,}")
        print(f"groups          {st.groups:,}")
        print(f"memory          {st.memory_bytes:,} bytes ({st.bytes_per_run:.1f} bytes/run)")
        print(f"from dump       {loaded.key if loaded else '(none: whole log)'}")
        print(f"offsets         {st.offsets}")
        return 0
    finally:
        await res.close()


async def _dump(settings: Settings) -> int:
    res = Resources(settings)
    try:
        store = DumpStore(await res.store(), prefix=keys.index_prefix(settings.etcd_prefix))
        index, _ = await build_index(settings, store)
        lock = LeaseLock(await res.kv(), lock_key(keys.index_dump_lock()), ttl=15)
        result = await Dumper(index, store, lock, DumpPolicy()).once(force=True)
        assert result is not None
        print(
            f"dumped {result.runs:,} runs to {result.key}: {result.size:,} bytes "
            f"({result.size / max(1, result.runs):.2f} bytes/run) in {result.seconds:.3f}s"
        )
        return 0
    finally:
        await res.close()


async def _verify(settings: Settings) -> int:
    res = Resources(settings)
    try:
        store = DumpStore(await res.store(), prefix=keys.index_prefix(settings.etcd_prefix))
        until = await end_offsets(settings.kafka, settings.topic_phases)
        from_dump, loaded = await build_index(settings, store, until=until)
        rebuilt, _ = await build_index(settings, store, from_dump=False, until=until)
        diff = compare(from_dump, rebuilt)
        print(f"dump {loaded.key if loaded else '(none)'} + tail: {diff.runs_a:,} runs")
        print(f"rebuilt from the log:  {diff.runs_b:,} runs")
        if diff.equal:
            print("identical")
            return 0
        print(
            f"differ: {diff.only_in_a} only in dump, {diff.only_in_b} only in rebuild, {diff.differing} differ"
        )
        for line in diff.examples:
            print(f"  {line}")
        return 1
    finally:
        await res.close()


def _run(fn: object) -> object:
    def cmd(args: argparse.Namespace) -> int:
        settings = Settings.from_args(args)
        setup_logging(settings.log_level, settings.log_format)
        return asyncio.run(fn(settings))  # type: ignore[operator, no-any-return]

    return cmd


def add_index_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    index = sub.add_parser(
        "index",
        help="the run index: stats, dump, verify",
        description="Inspect, dump or verify the run index (newest dump + log tail).",
    )
    isub = index.add_subparsers(dest="index_command", metavar="COMMAND", required=True)
    for name, fn, text in (
        ("stats", _stats, "runs, groups and bytes per run of the index (newest dump + tail)"),
        ("dump", _dump, "build the index (newest dump + tail) and write a new dump now"),
        (
            "verify",
            _verify,
            "compare newest dump + tail with a rebuild from the whole log; exit 1 if they differ",
        ),
    ):
        p = isub.add_parser(name, help=text, description=text)
        add_flags(p)
        p.set_defaults(func=_run(fn))

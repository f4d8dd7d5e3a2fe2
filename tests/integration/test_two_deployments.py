"""Deployments never mix (issue 21): two deployments on one S3 bucket and one etcd (different
app ids, topics and etcd prefixes) each write every object under their own prefix, index dumps
included, and each lists only its own runs, after dumps and restarts; a dump older workers left
at the bucket's root is not read (the index rebuilds from the log). A worker pointed at
storage that does not hold what its etcd pointers name stops with one line saying what to do."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from agents.config import Settings
from agents.keys import LEGACY_INDEX_PREFIX, object_prefix
from agents.resources import Resources
from agents.worker import EXIT_FATAL
from api.client import AsyncClient
from events import Phase, Result
from indexer import DumpStore, RunIndex
from indexer.dump import encode, snapshot
from tests.conftest import S3Endpoint
from tests.harness import (
    Worker,
    caught_up,
    make_settings,
    prepare_topics,
    wait_healthy,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.etcd, pytest.mark.s3, pytest.mark.timeout(420)]

GROUP = "/project/shared/branch/main"  # the same group in both deployments
TASKS = [{"id": "build", "name": "build"}]


def s3_settings(unique: str, kafka: str, etcd: str, ep: S3Endpoint, bucket: str) -> Settings:
    return make_settings(
        unique,
        kafka,
        etcd,
        f"s3://{bucket}?endpoint={ep.url}&region={ep.region}",
        partitions=2,
        s3_access_key=ep.access_key,
        s3_secret_key=ep.secret_key,
        index_dump_interval=0.5,
        index_dump_changes=1,
        log_format="text",  # the format that hid the reasons
    )


async def names_listed(s: Settings) -> list[str]:
    async with AsyncClient(f"http://127.0.0.1:{s.web_port}") as client:
        page = await client.list_runs(groups=["/project/shared"], limit=100)
    return sorted(r.name for r in page.runs)


async def object_keys(resources: Resources) -> list[str]:
    store = await resources.store()
    return [info.key async for info in store.list("")]


async def test_two_deployments_on_one_bucket_list_only_their_own_runs(
    kafka_bootstrap: str,
    etcd_endpoint: str,
    s3_endpoint: S3Endpoint,
    s3_bucket: str,
    unique: str,
    tmp_path: Path,
) -> None:
    a = s3_settings(f"{unique}a", kafka_bootstrap, etcd_endpoint, s3_endpoint, s3_bucket)
    b = s3_settings(f"{unique}b", kafka_bootstrap, etcd_endpoint, s3_endpoint, s3_bucket)
    assert object_prefix(a.etcd_prefix) != object_prefix(b.etcd_prefix)
    await asyncio.gather(prepare_topics(a), prepare_topics(b))
    deployments = {"a": a, "b": b}
    # What an older worker left at the bucket's root: a dump any deployment could have written
    # (here one naming a's phases topic and a run of the shared group). Never read.
    legacy = RunIndex()
    legacy.apply(999, GROUP, Phase.FINISHED, Result.SUCCESS, 3, name="legacy-intruder")
    legacy.mark_offset(f"{a.topic_phases}/0", 0)
    root = DumpStore(await Resources(a).store(), prefix=LEGACY_INDEX_PREFIX)
    await root.write(encode(snapshot(legacy)))
    workers = {k: Worker(s, tmp_path / f"{k}.log").start() for k, s in deployments.items()}
    resources = {k: Resources(s) for k, s in deployments.items()}
    want = {k: [f"{k}-{i}" for i in range(3)] for k in deployments}
    try:
        await asyncio.gather(
            *(wait_healthy(f"http://127.0.0.1:{s.web_port}") for s in deployments.values())
        )
        for k, s in deployments.items():
            async with AsyncClient(f"http://127.0.0.1:{s.web_port}") as client:
                for name in want[k]:
                    await client.create_run(group=GROUP, name=name, tasks=TASKS)

        for k, s in deployments.items():

            async def own(k: str = k, s: Settings = s) -> bool:
                return await names_listed(s) == want[k]

            await wait_until(own, within=60, what=f"deployment {k} to list its runs")

        # Both dumped their index and checkpointed their runs, each under its own prefix.
        for k, s in deployments.items():
            prefix = object_prefix(s.etcd_prefix)

            async def dumped(k: str = k, prefix: str = prefix) -> bool:
                keys = await object_keys(resources[k])
                return any(key.startswith(f"{prefix}index/dumps/") for key in keys)

            async def checkpointed(k: str = k, s: Settings = s) -> bool:
                return await caught_up(s, resources[k])

            await wait_until(dumped, within=60, what=f"deployment {k}'s index dump")
            await wait_until(checkpointed, within=60, what=f"deployment {k}'s checkpoints")
        keys = await object_keys(resources["a"])
        prefixes = tuple(object_prefix(s.etcd_prefix) for s in deployments.values())
        assert keys
        # Nothing at the root but the legacy dump, which nobody read.
        assert [k for k in keys if not k.startswith(prefixes)] == [
            "index/dumps/00000000000000000001.rsix"
        ]
        for s in deployments.values():
            assert any(k.startswith(f"{object_prefix(s.etcd_prefix)}rundata/") for k in keys)

        # Restarted, each starts from its own dump and still lists only its own runs.
        for w in workers.values():
            w.stop()
        for w in workers.values():
            w.start()
        await asyncio.gather(
            *(wait_healthy(f"http://127.0.0.1:{s.web_port}") for s in deployments.values())
        )
        for k, s in deployments.items():
            assert await names_listed(s) == want[k]
            text = workers[k].log_text()
            assert "index dumps at the storage root are not read" in text
            assert "index refused a phase change" not in text
            assert "index dump refused" not in text
            loaded = re.findall(r"index caught up .*from_dump=(\S+)", text)
            assert loaded[-1].startswith(f"{object_prefix(s.etcd_prefix)}index/dumps/"), loaded
    finally:
        for w in workers.values():
            w.stop()
        for r in resources.values():
            await r.close()


async def test_a_worker_on_storage_without_its_manifests_stops_with_one_line(
    kafka_bootstrap: str,
    etcd_endpoint: str,
    s3_endpoint: S3Endpoint,
    s3_bucket: str,
    unique: str,
    tmp_path: Path,
) -> None:
    # First on the local file system (as `file://./var/objects` by default) ...
    on_files = make_settings(
        unique, kafka_bootstrap, etcd_endpoint, f"file://{tmp_path}/objects", partitions=2
    )
    await prepare_topics(on_files)
    first = Worker(on_files, tmp_path / "files.log").start()
    resources = Resources(on_files)
    try:
        url = f"http://127.0.0.1:{on_files.web_port}"
        await wait_healthy(url)
        async with AsyncClient(url) as client:
            for i in range(4):
                await client.create_run(group=GROUP, name=f"r{i}", tasks=TASKS)

        async def checkpointed() -> bool:
            return await caught_up(on_files, resources)

        await wait_until(checkpointed, within=60, what="the runs' checkpoints")
    finally:
        first.stop()
        await resources.close()

    # ... then the same etcd prefix with S3 storage that holds none of it.
    wrong = _replace(on_files, s3_endpoint, s3_bucket)
    second = Worker(wrong, tmp_path / "s3.log").start()
    try:
        assert second.proc is not None
        code = await asyncio.to_thread(second.proc.wait, 180)
        text = second.log_text()
        assert code == EXIT_FATAL, text[-3000:]
        lines = [line for line in text.splitlines() if "does not hold" in line]
        assert len(lines) == 1, lines
        (line,) = lines
        assert f"{on_files.etcd_prefix}datamanager/partitions/" in line
        assert s3_bucket in line
        for way_out in ("--storage", "--etcd-prefix", "lost data", "code=wrong_storage"):
            assert way_out in line, line
        assert "loading partition failed" not in text
    finally:
        second.kill()


def _replace(s: Settings, ep: S3Endpoint, bucket: str) -> Settings:
    import dataclasses

    return dataclasses.replace(
        s,
        storage=f"s3://{bucket}?endpoint={ep.url}&region={ep.region}",
        s3_access_key=ep.access_key,
        s3_secret_key=ep.secret_key,
        log_format="text",
    )

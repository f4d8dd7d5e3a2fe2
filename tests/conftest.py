"""Session fixtures for the real services, and per-test unique names.

Each service fixture prefers, in order (README, "The local stack"):
  1. a URL from the environment (RUNSTREAM_TEST_KAFKA / RUNSTREAM_TEST_ETCD / RUNSTREAM_TEST_S3,
     falling back to the RUNSTREAM_* variables that ``deploy/local env`` prints);
  2. testcontainers, when a Docker daemon answers;
  3. the local stack that ``deploy/local up`` starts on 127.0.0.1.
A fixture checks that the service really answers. When it does not: with ``CI=true`` the test
fails (a missing service must never pass as a skip in CI); otherwise the test is skipped with the
command that starts the stack.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from kafka_ready import metadata_brokers  # noqa: E402  (deploy/ is not a package)

IN_CI = os.environ.get("CI", "").lower() == "true"


@dataclass(frozen=True, slots=True, kw_only=True)
class S3Endpoint:
    url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"


def _unavailable(service: str, why: str) -> None:
    msg = f"{service} is not available ({why}); start the stack with `deploy/local up`"
    if IN_CI:
        pytest.fail(f"CI=true and {msg}", pytrace=False)
    pytest.skip(msg)


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _docker_answers() -> bool:
    if os.environ.get("RUNSTREAM_TEST_NO_DOCKER"):
        return False
    try:
        import docker  # type: ignore[import-untyped]  # comes with testcontainers

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # any failure means: no usable daemon
        return False


def _split(hostport: str) -> tuple[str, int]:
    hostport = hostport.split("://", 1)[-1].split(",", 1)[0]
    host, _, port = hostport.rpartition(":")
    return host, int(port)


# ---------------------------------------------------------------------------------------- Kafka
@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a real Kafka broker that answers a metadata request."""
    url = _env("RUNSTREAM_TEST_KAFKA", "RUNSTREAM_KAFKA_BOOTSTRAP")
    container: Any = None
    if url is None and _docker_answers():
        from testcontainers.kafka import KafkaContainer  # type: ignore[import-untyped]

        container = KafkaContainer("confluentinc/cp-kafka:7.7.1").with_kraft()
        container.start()
        url = container.get_bootstrap_server()
    url = url or "127.0.0.1:9092"
    try:
        if metadata_brokers(*_split(url)) < 1:
            _unavailable("Kafka", f"{url} lists no broker")
    except OSError as exc:
        _unavailable("Kafka", f"{url}: {exc}")
    yield url.split("://", 1)[-1]
    if container is not None:
        container.stop()


# ----------------------------------------------------------------------------------------- etcd
@pytest.fixture(scope="session")
def etcd_endpoint() -> Iterator[str]:
    """``host:port`` of a real etcd whose /health says true."""
    url = _env("RUNSTREAM_TEST_ETCD", "RUNSTREAM_ETCD_ENDPOINT")
    container: Any = None
    if url is None and _docker_answers():
        from testcontainers.core.container import DockerContainer  # type: ignore[import-untyped]

        container = DockerContainer("quay.io/coreos/etcd:v3.4.23").with_exposed_ports(2379)
        container.with_command(
            "etcd --listen-client-urls http://0.0.0.0:2379 "
            "--advertise-client-urls http://0.0.0.0:2379 --max-txn-ops 1024"
        )
        container.start()
        url = f"{container.get_container_host_ip()}:{container.get_exposed_port(2379)}"
    url = (url or "127.0.0.1:2379").split("://", 1)[-1]
    try:
        with urllib.request.urlopen(f"http://{url}/health", timeout=2) as resp:
            if json.load(resp).get("health") != "true":
                _unavailable("etcd", f"{url} reports unhealthy")
    except OSError as exc:
        _unavailable("etcd", f"{url}: {exc}")
    yield url
    if container is not None:
        container.stop()


# ------------------------------------------------------------------------------------------- S3
@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    """A real S3 server (SeaweedFS locally) with credentials that work."""
    url = _env("RUNSTREAM_TEST_S3", "RUNSTREAM_S3_ENDPOINT")
    storage = _env("RUNSTREAM_STORAGE") or ""
    if url is None and "endpoint=" in storage:  # what deploy/local env exports
        url = storage.split("endpoint=", 1)[1].split("&", 1)[0]
    ak = _env("RUNSTREAM_S3_ACCESS_KEY") or "runstream"
    sk = _env("RUNSTREAM_S3_SECRET_KEY") or "runstream-secret"
    container: Any = None
    if url is None and _docker_answers():
        from testcontainers.minio import MinioContainer  # type: ignore[import-untyped]

        container = MinioContainer(access_key=ak, secret_key=sk)
        container.start()
        cfg = container.get_config()
        url = f"http://{cfg['endpoint']}"
    endpoint = S3Endpoint(url=url or "http://127.0.0.1:8333", access_key=ak, secret_key=sk)
    try:
        with socket.create_connection(_split(endpoint.url), timeout=2):
            pass
        _s3_client(endpoint).list_buckets()
    except Exception as exc:  # connection refused, auth failure, anything: not usable
        _unavailable("S3", f"{endpoint.url}: {exc}")
    yield endpoint
    if container is not None:
        container.stop()


def _s3_client(ep: S3Endpoint) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=ep.url,
        aws_access_key_id=ep.access_key,
        aws_secret_access_key=ep.secret_key,
        region_name=ep.region,
        config=Config(retries={"max_attempts": 3, "mode": "standard"}),
    )


# ------------------------------------------------------------------------------ unique per test
@pytest.fixture
def unique() -> str:
    """A short token, fresh for every test, for topic, group, bucket and key names."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def s3_bucket(s3_endpoint: S3Endpoint, unique: str) -> Iterator[str]:
    """A fresh, empty bucket on the S3 server, emptied and removed after the test."""
    client = _s3_client(s3_endpoint)
    name = f"rs-{unique}"
    client.create_bucket(Bucket=name)
    yield name
    with contextlib.suppress(Exception):  # best-effort cleanup; the name is unique anyway
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys})
        client.delete_bucket(Bucket=name)


@pytest.fixture
def etcd_prefix(unique: str) -> str:
    """A unique etcd key prefix for one test."""
    return f"/test/{unique}/"


@pytest.fixture
def kafka_topic(unique: str) -> str:
    """A unique topic name for one test (auto-created, or create it with the partitions you need)."""
    return f"test.{unique}"


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A command run in-process (``agents.cli.main``) sets up logging on the stderr of that
    moment, often a capture that is closed once the test ends: put the root logger back after
    every test, so that no later test logs into a closed stream ("I/O operation on closed
    file" on its stderr)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)

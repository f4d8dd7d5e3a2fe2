"""The S3 server is real: put / get / list / delete and a conditional put through boto3."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.conftest import S3Endpoint

pytestmark = [pytest.mark.s3, pytest.mark.timeout(60)]


def test_put_get_list_delete_conditional(s3_endpoint: S3Endpoint, s3_bucket: str) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint.url,
        aws_access_key_id=s3_endpoint.access_key,
        aws_secret_access_key=s3_endpoint.secret_key,
        region_name=s3_endpoint.region,
    )
    for key in ("a/1", "a/2", "a/sub/3", "b/4"):
        s3.put_object(Bucket=s3_bucket, Key=key, Body=key.encode())
    assert s3.get_object(Bucket=s3_bucket, Key="a/2")["Body"].read() == b"a/2"

    listed = s3.list_objects_v2(Bucket=s3_bucket, Prefix="a/", StartAfter="a/1")
    assert [o["Key"] for o in listed["Contents"]] == ["a/2", "a/sub/3"]
    shallow = s3.list_objects_v2(Bucket=s3_bucket, Prefix="a/", Delimiter="/")
    assert [o["Key"] for o in shallow["Contents"]] == ["a/1", "a/2"]
    assert [p["Prefix"] for p in shallow["CommonPrefixes"]] == ["a/sub/"]

    s3.delete_object(Bucket=s3_bucket, Key="a/1")
    with pytest.raises(ClientError) as missing:
        s3.get_object(Bucket=s3_bucket, Key="a/1")
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"

    s3.put_object(Bucket=s3_bucket, Key="once", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=s3_bucket, Key="once", Body=b"second", IfNoneMatch="*")
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
    assert s3.get_object(Bucket=s3_bucket, Key="once")["Body"].read() == b"first"

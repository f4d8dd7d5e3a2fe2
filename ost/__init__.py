"""runstream ost: the object storage port and its posix and S3 adapters.

``ost.s3.S3Storage`` is not re-exported here so that importing ``ost`` does not import
boto3; use ``open_storage("s3://...")`` or import ``ost.s3`` explicitly.
"""

from ost.errors import InvalidKey, NotExist, OstError, StorageUnavailable
from ost.factory import open_storage
from ost.keys import check_key, check_prefix
from ost.port import ObjectInfo, ObjectStorage
from ost.posix import PosixStorage

__all__ = [
    "InvalidKey",
    "NotExist",
    "ObjectInfo",
    "ObjectStorage",
    "OstError",
    "PosixStorage",
    "StorageUnavailable",
    "check_key",
    "check_prefix",
    "open_storage",
]

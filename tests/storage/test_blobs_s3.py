"""Blobs on an S3-compatible store (moto's server on 127.0.0.1) through fsspec/s3fs, configured
only through settings: ``UNMARK_BLOB_ROOT=s3://bucket/prefix`` plus the endpoint, credentials and
region. The network guard fails these tests if anything tries to reach AWS itself."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pytest

from pipeline.config import load_settings
from storage import BlobStore, open_catalog
from storage.blobs import BlobError, blob_key, sha256_bytes
from storage.models import Image


def _s3_settings(tmp_path, s3_server, bucket: str, prefix: str = "unmark/blobs"):
    from s3server import S3_KEY_ID, S3_REGION, S3_SECRET

    return load_settings(
        home=tmp_path / "home",
        blob_root=f"s3://{bucket}/{prefix}",
        blob_endpoint_url=s3_server.endpoint,
        blob_key_id=S3_KEY_ID,
        blob_secret=S3_SECRET,
        blob_region=S3_REGION,
    )


def test_put_get_exists_keys_on_s3(tmp_path, s3_server, s3_bucket):
    bs = BlobStore.from_settings(_s3_settings(tmp_path, s3_server, s3_bucket).storage)
    assert not bs.is_local and list(bs.keys()) == []
    sha, key = bs.put(b"first blob")
    assert (sha, key) == (sha256_bytes(b"first blob"), blob_key(sha256_bytes(b"first blob")))
    assert bs.exists(key) and bs.get(key) == b"first blob"
    _, key2 = bs.put(b"second blob")
    assert sorted(bs.keys()) == sorted([key, key2])
    with bs.open(key) as fh:
        assert fh.read() == b"first blob"
    # the object really is in the bucket under the prefix (read back with plain boto3)
    import boto3
    from s3server import S3_KEY_ID, S3_REGION, S3_SECRET

    client = boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id=S3_KEY_ID,
                          aws_secret_access_key=S3_SECRET, region_name=S3_REGION)
    body = client.get_object(Bucket=s3_bucket, Key=f"unmark/blobs/{key}")["Body"].read()
    assert body == b"first blob"
    # another prefix in the same bucket is another store
    other = BlobStore.from_settings(_s3_settings(tmp_path, s3_server, s3_bucket, prefix="elsewhere").storage)
    other.put(b"not mine")
    assert sorted(bs.keys()) == sorted([key, key2])
    with pytest.raises(BlobError):
        bs.get(blob_key("0" * 64))
    with pytest.raises(BlobError):
        bs.local_path(key)
    bs.delete(key2)
    assert not bs.exists(key2) and list(bs.keys()) == [key]


def test_idempotent_put_does_not_rewrite_the_object(tmp_path, s3_server, s3_bucket):
    bs = BlobStore.from_settings(_s3_settings(tmp_path, s3_server, s3_bucket).storage)
    _, key = bs.put(b"same bytes")
    before = bs.fs.info(bs.path(key))
    time.sleep(1.1)  # S3 LastModified has one-second resolution
    assert bs.put(b"same bytes")[1] == key
    bs.fs.invalidate_cache()
    after = bs.fs.info(bs.path(key))
    assert after["LastModified"] == before["LastModified"] and after["ETag"] == before["ETag"]
    assert list(bs.keys()) == [key]


def test_cli_import_into_s3_blobs_from_environment(tmp_path, s3_server, s3_bucket):
    """The whole path from UNMARK_* environment variables: `unmark import` in a subprocess puts
    the image into the bucket and the catalog row points at it."""
    from PIL import Image as PILImage
    from s3server import S3_KEY_ID, S3_REGION, S3_SECRET

    buf = io.BytesIO()
    PILImage.new("RGB", (80, 64), (10, 200, 30)).save(buf, format="PNG")
    (tmp_path / "photo.png").write_bytes(buf.getvalue())
    env = dict(os.environ, UNMARK_HOME=str(tmp_path / "home"), UNMARK_BLOB_ROOT=f"s3://{s3_bucket}/cli",
               UNMARK_BLOB_ENDPOINT_URL=s3_server.endpoint, UNMARK_BLOB_KEY_ID=S3_KEY_ID,
               UNMARK_BLOB_SECRET=S3_SECRET, UNMARK_BLOB_REGION=S3_REGION)
    cli = [sys.executable, "-m", "flows.cli"]
    r = subprocess.run([*cli, "import", str(tmp_path / "photo.png"), "--json"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout[r.stdout.index("{"):])["added"] == 1
    settings = load_settings(home=tmp_path / "home", blob_root=f"s3://{s3_bucket}/cli",
                             blob_endpoint_url=s3_server.endpoint, blob_key_id=S3_KEY_ID, blob_secret=S3_SECRET,
                             blob_region=S3_REGION)
    cat = open_catalog(settings.storage)
    with cat.session() as s:
        key = s.query(Image).one().blob_key
    assert BlobStore.from_settings(settings.storage).get(key) == buf.getvalue()

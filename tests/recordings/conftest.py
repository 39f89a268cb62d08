"""Fixtures shared by the recordings tests: both storage backends behind one `storage` fixture.

`recordings_config` is parametrized over `local` and `s3`, so a test that takes it (or `storage`)
runs once per backend. The s3 variant talks to a real S3 HTTP server, moto in server mode, started
once per session on 127.0.0.1 (skipped, with the reason, when moto is missing or cannot start);
each test gets a fresh bucket.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.ioloop import IOLoop

from b3lb.config import load_config
from b3lb.recordings.storage import Storage, make_storage

S3_CREDENTIALS = {"s3_access_key": "testing", "s3_secret_key": "testing", "s3_region": "us-east-1"}
SERVER_START_TIMEOUT = 20.0


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL of a moto S3 server on loopback, for the whole session."""
    try:
        import boto3  # noqa: F401 - the backend needs it too
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        pytest.skip(f"S3 backend tests need moto[server] and boto3 ({exc}); pip install -e '.[dev]'")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: a free one
    failure: list[BaseException] = []

    def start() -> None:
        try:
            server.start()
        except BaseException as exc:  # reported through the skip below
            failure.append(exc)

    # start() waits forever when the server thread dies before binding; bound the wait.
    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    starter.join(SERVER_START_TIMEOUT)
    if failure or starter.is_alive():
        reason = repr(failure[0]) if failure else f"not listening after {SERVER_START_TIMEOUT:.0f} s"
        pytest.skip(f"moto S3 server could not start on 127.0.0.1: {reason}")
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_CREDENTIALS["s3_access_key"],
        aws_secret_access_key=S3_CREDENTIALS["s3_secret_key"],
        region_name=S3_CREDENTIALS["s3_region"],
    )


@pytest.fixture
def s3_client(s3_server: str) -> Iterator[Any]:
    """A plain boto3 client on the moto server, for looking behind the backend's back."""
    client = _s3_client(s3_server)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(params=["local", "s3"], ids=["local", "s3"])
def recordings_config(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Overrides of [recordings] for one backend (the test runs once per backend)."""
    if request.param == "local":
        return {"storage": "local", "local_path": str(tmp_path / "rec")}
    endpoint = request.getfixturevalue("s3_server")
    client = request.getfixturevalue("s3_client")
    bucket = "b3lb-test-" + secrets.token_hex(6)
    client.create_bucket(Bucket=bucket)
    return {"storage": "s3", "s3_endpoint": endpoint, "s3_bucket": bucket, **S3_CREDENTIALS}


@pytest.fixture
def storage(recordings_config: dict[str, Any], io_loop: IOLoop) -> Iterator[Storage]:
    """A ready Storage for `recordings_config`, closed after the test."""
    base = load_config(env={})
    config = dataclasses.replace(base, recordings=dataclasses.replace(base.recordings, **recordings_config))
    store = make_storage(config)
    try:
        yield store
    finally:
        io_loop.run_sync(store.close)

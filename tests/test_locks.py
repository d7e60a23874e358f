"""The stage lock: one holder at a time on a local disk and on an S3-speaking server (moto, 127.0.0.1);
a lease left by a dead run is taken over once it expires."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from tasks.locks import exclusive
from tasks.storage import Storage


def _overlaps(storage: Storage, hold_s: float = 0.3, **kw) -> int:
    """Two threads take the same lock; how many times both held it at once."""
    inside, overlaps = [0], [0]
    guard = threading.Lock()

    def worker():
        with exclusive(storage, "stage", "key", "_work", "lock", **kw):
            with guard:
                inside[0] += 1
                overlaps[0] += inside[0] > 1
            time.sleep(hold_s)
            with guard:
                inside[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return overlaps[0]


def test_local_lock_is_exclusive(tmp_path):
    storage = Storage(str(tmp_path))
    assert _overlaps(storage) == 0
    with exclusive(storage, "stage", "done", "lock", tidy=True):
        assert storage.exists("stage", "done", "lock")
    assert not storage.exists("stage", "done", "lock"), "a finished artifact's folder keeps no lock file"


@pytest.fixture(scope="module")
def bucket(monkeypatch_module):
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }.items():
        monkeypatch_module.setenv(k, v)
    storage = Storage("s3://forja-locks/root")
    storage.fs.mkdir("forja-locks")
    yield storage
    server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_s3_lease_is_exclusive_and_released(bucket):
    assert _overlaps(bucket, poll_s=0.05) == 0
    assert not bucket.exists("stage", "key", "_work", "lock")


def test_expired_lease_of_a_dead_run_is_taken_over(bucket):
    dead = {"owner": "gone:1:x", "expires": time.time() - 1}
    bucket.fs.pipe_file(bucket.path("stage", "old", "_work", "lock"), json.dumps(dead).encode())
    started = time.perf_counter()
    with exclusive(bucket, "stage", "old", "_work", "lock", poll_s=0.05):
        held = json.loads(bucket.fs.cat_file(bucket.path("stage", "old", "_work", "lock")))
    assert held["owner"] != "gone:1:x" and time.perf_counter() - started < 5

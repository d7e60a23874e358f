"""One builder per stage key: runs that share a storage root never write the same stage folder at once.

Two runs that need the same artifact (two `forja run` in two terminals, two workers on one bucket) would
otherwise both write `<root>/<stage>/<key>/` and corrupt each other's files. The first takes the lock and
builds; the second waits, then finds the manifest and reuses it.

- Local (and POSIX shared) disks: `fcntl.flock` on a file in the stage's scratch folder. The kernel drops
  it when the holder dies, so a killed run never leaves a stale lock.
- Object stores: a lease object created with a conditional PUT (`If-None-Match: *`, AWS S3 and MinIO),
  renewed while the build runs; a lease not renewed within `ttl_s` belongs to a dead run and is taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

from tasks.storage import Storage

log = logging.getLogger("forja")


@contextlib.contextmanager
def exclusive(
    storage: Storage, *parts: str, ttl_s: float = 60.0, poll_s: float = 1.0, tidy: bool = False
) -> Iterator[None]:
    """Hold the lock named by `parts` (a path under the storage root) for the body of the `with`.

    `tidy`: delete the lock file when the body succeeds, so the folder keeps only the artifact. Only for
    callers whose waiters re-check for the finished work before doing it (a waiter may hold the deleted
    file while a newcomer locks a new one).
    """
    if storage.is_local:
        with _flock(storage.path(*parts), tidy):
            yield
    else:
        with _lease(storage, storage.path(*parts), ttl_s, poll_s):
            yield


@contextlib.contextmanager
def _flock(path: str, tidy: bool) -> Iterator[None]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another run that holds %s", path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
            if tidy:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _lease_body(owner: str, ttl_s: float) -> bytes:
    return json.dumps({"owner": owner, "expires": time.time() + ttl_s}).encode()


@contextlib.contextmanager
def _lease(storage: Storage, path: str, ttl_s: float, poll_s: float) -> Iterator[None]:
    fs = storage.fs
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    waited = False
    while True:
        try:
            fs.pipe_file(path, _lease_body(owner, ttl_s), mode="create")
            break
        except FileExistsError:
            try:
                held = json.loads(fs.cat_file(path))
            except (FileNotFoundError, ValueError):
                continue  # released (or being replaced) right now: try again
            if held.get("expires", 0) < time.time():
                log.warning("taking over the expired lease %s of %s", path, held.get("owner"))
                fs.rm_file(path)
                continue
            if not waited:
                log.info("waiting for %s, which holds %s", held.get("owner"), path)
                waited = True
            time.sleep(poll_s)
        except (TypeError, NotImplementedError, ValueError):
            # a filesystem without exclusive create: no lock, as before this module existed
            log.warning("%s cannot create files exclusively; building without a lock", type(fs).__name__)
            yield
            return
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl_s / 3):
            fs.pipe_file(path, _lease_body(owner, ttl_s))

    renewer = threading.Thread(target=renew, name="forja-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(path)

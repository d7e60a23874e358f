"""A temporary Prefect API for one `forja` command when no server is configured (PREFECT_API_URL unset).

Prefect would start the same server itself, on the command's first flow call: after the flows' imports,
and after importing its own server package into this process. Launched here instead, it boots on another
core while the command imports. Runs still land in PREFECT_HOME's database, so `prefect server start`
shows them later. Flow-run heartbeats are off: nothing could act on them once the server is gone, and
stopping each run's heartbeat thread costs up to a second per stage.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_booting: LocalApi | None = None


class LocalApi:
    """Prefect's API app served by uvicorn in a child process, on a loopback socket bound here and handed
    over (--fd): the port is ours from the start, so the URL given to Prefect's settings never changes."""

    def __init__(self, env: dict[str, str]):
        import prefect

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent),
                    "--factory", "prefect.server.api.server:create_app", "--fd", str(sock.fileno()),
                    "--log-level", "error", "--lifespan", "on",
                ],
                env=env,
                pass_fds=[sock.fileno()],
            )  # fmt: skip
        self.ready = False

    def wait(self, timeout: float) -> None:
        """Block until the API answers its health check."""
        import httpx

        if self.ready:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (code := self.process.poll()) is not None:
                raise RuntimeError(f"the temporary Prefect server exited with code {code} (its log is above)")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    self.ready = True
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"the temporary Prefect server did not answer within {timeout:.0f} s; raise "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or start one (prefect server start)"
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def prefect_api() -> Iterator[None]:
    """Serve this command's flows from a temporary API unless a Prefect server is configured."""
    global _booting
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_UI_URL,
        get_current_settings,
        temporary_settings,
    )

    if PREFECT_API_URL.value():
        yield
        return
    env = {
        **os.environ,
        **get_current_settings().to_environment_variables(exclude_unset=True),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",  # the services a short-lived server needs, no more
    }
    server = _booting = LocalApi(env)
    try:
        # no UI to link to; no heartbeats (see above)
        updates = {PREFECT_API_URL: server.url, PREFECT_UI_URL: "", PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
        with temporary_settings(updates=updates):
            yield
    finally:
        _booting = None
        # Send what Prefect still holds before the server goes; at exit it would retry a closed port.
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
        server.stop()


def wait_ready() -> None:
    """Called right before the first flow run: by then the command's imports are done."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    if _booting is not None:
        _booting.wait(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())

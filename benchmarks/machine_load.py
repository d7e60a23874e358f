"""What a benchmark run used: CPU time and memory of this process tree, and the load other programs put on
the machine meanwhile; and the scratch folder it runs in. Shared by the benchmarks that run stages across
worker processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil


class ProcessTree:
    """Polls this process and all its descendants (datatrove's forkserver, pool workers, managers).

    `peak_rss`: the largest sum of their RSS seen at one poll. `cpu_seconds`: user + system time they
    used while watched (a process is counted up to its last poll, so up to one interval per process is
    missed). CPU time says how much work was done even when other programs share the cores.
    `others_share`: the share of all cores that other programs used meanwhile (wall times taken while it
    is high are slowed by them, not by the code measured).
    """

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.peak_rss = 0
        self._cpu: dict[tuple[int, float], float] = {}
        self._start_cpu: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def sample(self) -> None:
        me = psutil.Process()
        rss = 0
        for proc in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # ended between listing and reading
                with proc.oneshot():
                    mem, cpu, born = proc.memory_info().rss, proc.cpu_times(), proc.create_time()
                rss += mem
                self._cpu[(proc.pid, born)] = cpu.user + cpu.system
        self.peak_rss = max(self.peak_rss, rss)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    @property
    def cpu_seconds(self) -> float:
        return sum(v - self._start_cpu.get(k, 0.0) for k, v in self._cpu.items())

    @staticmethod
    def _machine_busy() -> float:
        t = psutil.cpu_times()
        return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))

    def __enter__(self) -> ProcessTree:
        self.sample()
        self._start_cpu = dict(self._cpu)
        self._busy, self._wall = self._machine_busy(), time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        busy, wall = self._machine_busy() - self._busy, time.perf_counter() - self._wall
        others = max(0.0, busy - self.cpu_seconds)
        self.wall = wall
        self.others_share = round(others / (wall * (os.cpu_count() or 1)), 3) if wall > 0 else 0.0


@contextlib.contextmanager
def scratch(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A scratch folder for a run, with this process's stderr sent to `datatrove.log` in it (datatrove logs
    every task there, from this process and from its workers). If the run fails, the log's tail is
    printed and the folder kept; otherwise the folder is removed unless `keep`."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    log = work / "datatrove.log"
    saved_stderr = os.dup(2)
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    failed = True
    try:
        yield work
        failed = False
    finally:
        sys.stderr.flush()
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
        if failed:
            tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
            print("\n".join(["log tail:", *tail]), file=sys.stderr)
        if keep or failed:
            print(f"scratch folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

"""A corpus run killed (SIGKILL, every process of it) in the middle of dedup resumes to the same corpus.

No manifest means not done: the kill must leave no dedup manifest, the rerun must reuse the stages that
finished before it (collect, clean), resume dedup, and end with exactly the corpus of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"
STAGES = ("collect", "clean", "dedup", "detox", "stats")
CLI = [sys.executable, "-m", "flows.cli", "corpus", "--json"]
ATTEMPTS = 3  # a kill that comes too late (dedup already finished) is retried in a fresh folder

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs POSIX")]


def environment(prefect_home: Path) -> dict[str, str]:
    """The caller's environment, with a Prefect home of its own (two runs at once: two temporary servers)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "AWS_"))}
    return base | {"PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def command(store: Path) -> list[str]:
    """`forja corpus --json` on the bundled sample; stdout is the final manifest, stderr the logs."""
    return [*CLI, "--input", str(SAMPLE), "--storage", str(store)]


class CorpusRun:
    """A whole `forja corpus --json` run in the background, in its own process group."""

    def __init__(self, store: Path, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.out, self.err = workdir / "stdout.json", workdir / "stderr.log"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                command(store),
                cwd=REPO,
                env=environment(workdir / "prefect"),
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    def result(self) -> dict:
        try:
            rc = self.proc.wait(timeout=300)
        finally:
            self.stop()
        assert rc == 0, f"forja corpus failed ({rc}):\n{self.err.read_text(errors='replace')[-6000:]}"
        return json.loads(self.out.read_text().strip().splitlines()[-1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def only(store: Path, pattern: str) -> Path | None:
    found = glob.glob(str(store / pattern))
    assert len(found) <= 1, found
    return Path(found[0]) if found else None


def live_members(pgid: int) -> list[int]:
    """Processes of a process group that are not zombies (zombies wait for a reaper, they run nothing)."""
    alive = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.split("/")[2]))
    return alive


def kill_during_dedup(store: Path, workdir: Path) -> float:
    """Start a run; once MinHash signatures are being written, SIGKILL its whole process group.

    Returns the time of the kill. Fails if the run ends or stalls before the moment comes.
    """
    run = CorpusRun(store, workdir)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and run.proc.poll() is None:
            if glob.glob(str(store / "dedup" / "*" / "_work" / "minhash" / "sigs" / "bucket_*" / "*")):
                break
            time.sleep(0.01)
        else:
            log = run.err.read_text(errors="replace")[-6000:]
            pytest.fail(f"the run ended (rc={run.proc.returncode}) or stalled before dedup:\n{log}")
        os.killpg(run.proc.pid, signal.SIGKILL)
        killed_at = time.time()
    finally:
        run.stop()
    if os.path.isdir("/proc"):  # the flow's workers and its Prefect server went down with it
        deadline = time.monotonic() + 15
        while live_members(run.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not live_members(run.proc.pid)
    return killed_at


def snapshot_completions(work: Path) -> dict[str, int]:
    """datatrove's per-task completion markers of a stage's scratch folder, with their mtimes."""
    return {
        str(p.relative_to(work)): p.stat().st_mtime_ns
        for p in work.glob("logs/*/completions/*")
        if p.is_file()
    }


def stage_refs(manifest: dict) -> dict[str, str]:
    """stage -> key of every stage behind a stats manifest, itself included."""
    refs = {ref["stage"]: ref["key"] for ref in manifest["inputs"].values()}
    return refs | {manifest["stage"]: manifest["key"]}


def corpus_records(store: Path, manifest: dict) -> dict[str, str]:
    from tasks.corpus.shards import iter_records
    from tasks.storage import Storage

    storage = Storage(str(store))
    records: dict[str, str] = {}
    for part in manifest["stats"]["parts"]:
        for r in iter_records(storage.datafolder(part["stage"], part["key"], "shards")):
            assert r["id"] not in records, f"document {r['id']} appears twice"
            records[r["id"]] = r["text"]
    return records


def test_kill_during_dedup_then_rerun_gives_the_uninterrupted_corpus(tmp_path):
    fresh_store = tmp_path / "fresh"
    uninterrupted = CorpusRun(fresh_store, tmp_path / "fresh-run")  # the reference, meanwhile
    try:
        check_kill_and_resume(tmp_path, uninterrupted, fresh_store)
    finally:
        uninterrupted.stop()


def check_kill_and_resume(tmp_path: Path, uninterrupted: CorpusRun, fresh_store: Path) -> None:
    for attempt in range(ATTEMPTS):
        crashed = tmp_path / f"crashed-{attempt}"
        killed_at = kill_during_dedup(crashed, tmp_path / f"killed-{attempt}")
        dedup_dir = only(crashed, "dedup/*")
        assert dedup_dir is not None, "killed before dedup started"
        if not (dedup_dir / "manifest.json").exists():
            break
    else:
        pytest.fail(f"dedup finished before the kill in {ATTEMPTS} attempts")

    # The kill came during dedup: the stages before it are finished, dedup is half done and unlisted.
    assert not (dedup_dir / "manifest.json").exists()
    assert only(crashed, "detox/*") is None and only(crashed, "stats/*") is None
    assert not (crashed / "corpus" / "latest.json").exists()
    finished = {}
    for stage in ("collect", "clean"):
        stage_dir = only(crashed, f"{stage}/*")
        assert stage_dir is not None and (stage_dir / "manifest.json").exists(), stage
        finished[stage] = json.loads((stage_dir / "manifest.json").read_text())
    before = snapshot_completions(dedup_dir / "_work")
    assert any(name.startswith("logs/exact1/") for name in before), before

    resumed = CorpusRun(crashed, tmp_path / "resumed").result()
    fresh = uninterrupted.result()

    # The rerun reused collect and clean as they were, resumed dedup, and finished every stage.
    keys = stage_refs(resumed)
    assert set(keys) == set(STAGES)
    for stage, manifest in finished.items():
        assert keys[stage] == manifest["key"]
        after = json.loads((crashed / stage / manifest["key"] / "manifest.json").read_text())
        assert after == manifest, f"{stage} was rebuilt"
        assert len(glob.glob(str(crashed / stage / "*"))) == 1
    assert keys["dedup"] == dedup_dir.name
    dedup = json.loads((dedup_dir / "manifest.json").read_text())
    assert datetime.fromisoformat(dedup["created_at"]).timestamp() > killed_at
    after = snapshot_completions(dedup_dir / "_work")
    assert {k: after[k] for k in before} == before, "tasks finished before the kill were run again"

    # ... and the corpus is exactly that of an uninterrupted run.
    assert keys == stage_refs(fresh)
    crashed_docs, fresh_docs = corpus_records(crashed, resumed), corpus_records(fresh_store, fresh)
    assert len(crashed_docs) == len(fresh_docs) == fresh["stats"]["documents"] > 0
    assert set(crashed_docs) == set(fresh_docs)
    assert crashed_docs == fresh_docs
    for field in ("documents", "bytes", "tokens_estimate", "languages", "funnel"):
        assert resumed["stats"][field] == fresh["stats"][field], field
    fresh_dedup = json.loads((fresh_store / "dedup" / keys["dedup"] / "manifest.json").read_text())
    for field in ("documents_in", "documents", "exact_removed", "near_removed"):
        assert dedup["stats"][field] == fresh_dedup["stats"][field], field


def test_temp_file_of_a_killed_write_is_not_part_of_the_next_artifact(tmp_path):
    """A process killed inside `write_bytes_atomic` leaves `<name>.tmp-<hex>` next to the target; the
    rerun's manifest must list the artifact's files only, not that half-written sibling."""
    from tasks.manifest import MANIFEST, run_stage, stage_key
    from tasks.storage import Storage

    storage = Storage(str(tmp_path))
    key = stage_key("toy", {"n": 1}, {}, "v1")
    stage_dir = tmp_path / "toy" / key
    (stage_dir / "part").mkdir(parents=True)
    (stage_dir / f"{MANIFEST}.tmp-0123456789abcdef").write_text('{"stage": "to')
    (stage_dir / "part" / "0.txt.tmp-fedcba9876543210").write_bytes(b"half")

    def build(out):
        out.storage.write_bytes_atomic(b"payload", out.stage, out.key, "part", "0.txt")
        return {}

    manifest = run_stage(storage, "toy", {"n": 1}, {}, "v1", build)
    assert [f.path for f in manifest.files] == ["part/0.txt"]
    assert storage.list_files("toy", key) == [MANIFEST, "part/0.txt"]

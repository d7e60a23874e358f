"""The shard stage killed (SIGKILL, every process of it) in the middle of a rank resumes to the same shards.

No manifest means not done: the kill must leave no manifest, the rerun (a new process) must skip the ranks
that were complete, redo the one that was cut (its token file half written), and end with the files of an
uninterrupted run, byte for byte, listed with their digests in the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"
TASKS = 4  # ranks, run one after another (workers=1): one is complete while a later one is running
CORPUS_FILES = 8
CORPUS_BYTES = 12_000_000  # enough text for each rank to take a noticeable time
ATTEMPTS = 3  # a run that ends before the kill (a much faster machine) is retried in a fresh folder

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs POSIX")]

RUNNER = """
import json, sys

from tasks.config import ShardsConfig, TokenizerConfig
from tasks.manifest import Manifest
from tasks.storage import Storage
from tasks.tokenizer.shards import tokenize_corpus

if __name__ == "__main__":
    root, spec = sys.argv[1], json.loads(open(sys.argv[2]).read())
    manifest = tokenize_corpus(
        Storage(root),
        ShardsConfig(**spec["shards"]),
        TokenizerConfig(**spec["tokenizer_config"]),
        Manifest.model_validate(spec["corpus"]),
        Manifest.model_validate(spec["tokenizer"]),
    )
    print(manifest.model_dump_json())
"""


def shuffled_sentences(text: str, rng: random.Random) -> str:
    lines = []
    for line in text.split("\n"):
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", line) if s]
        rng.shuffle(sentences)
        lines.append(" ".join(sentences))
    return "\n".join(lines)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """A storage root with a corpus of ~12 MB (the collected sample and reshuffled copies of it, each with
    its own id) and a tokenizer trained on the sample; plus the spec the runner script reads."""
    from datatrove.data import Document

    from tasks.config import ShardsConfig, load_config
    from tasks.corpus.collect import collect
    from tasks.corpus.shards import iter_records, shard_writer
    from tasks.manifest import Manifest
    from tasks.storage import Storage
    from tasks.tokenizer.train import train_tokenizer

    base_dir = tmp_path_factory.mktemp("tokenizer-crash")
    base = Storage(str(base_dir / "base"))
    cfg = load_config(REPO / "configs" / "tiny.yaml")
    collected = collect(base, cfg.corpus, [str(SAMPLE)])
    sample = list(iter_records(base.datafolder("collect", collected.key, "shards")))

    def corpus_manifest(stage: str, key: str) -> Manifest:
        return Manifest(
            stage="stats",
            key=f"{stage}-{key}",
            url=base.url("stats", key),
            config={},
            code_version="test",
            stats={"parts": [{"stage": stage, "key": key}], "tokens_estimate": CORPUS_BYTES // 4},
            created_at=datetime.now(UTC),
        )

    tokenizer = train_tokenizer(base, cfg.tokenizer, corpus_manifest("collect", collected.key))

    rng, total, n, copy = random.Random(7), 0, 0, 0
    with shard_writer(base.datafolder("detox", "big", "shards")) as writer:
        while total < CORPUS_BYTES:
            for rec in sample:
                text = rec["text"] if copy == 0 else shuffled_sentences(rec["text"], rng)
                doc_id = rec["id"] if copy == 0 else f"{rec['id']}#{copy}"
                writer.write(Document(text=text, id=doc_id, metadata=rec["metadata"]), rank=n % CORPUS_FILES)
                total, n = total + len(text.encode("utf-8")), n + 1
            copy += 1
    spec = {
        "shards": ShardsConfig(tasks=TASKS, workers=1).model_dump(),
        "tokenizer_config": cfg.tokenizer.model_dump(),
        "corpus": corpus_manifest("detox", "big").model_dump(mode="json"),
        "tokenizer": tokenizer.model_dump(mode="json"),
    }
    (base_dir / "spec.json").write_text(json.dumps(spec))
    (base_dir / "runner.py").write_text(RUNNER)
    return {"dir": base_dir, "base": Path(base.root), "spec": spec, "tokenizer_key": tokenizer.key}


def new_root(inputs: dict, root: Path) -> Path:
    """A storage root holding only the corpus and the tokenizer."""
    for rel in ("detox/big", f"tokenizer/{inputs['tokenizer_key']}"):
        shutil.copytree(inputs["base"] / rel, root / rel)
    return root


def command(inputs: dict, root: Path) -> list[str]:
    return [sys.executable, str(inputs["dir"] / "runner.py"), str(root), str(inputs["dir"] / "spec.json")]


def runner_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def live_members(pgid: int) -> list[int]:
    """Processes of a process group that are not zombies."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def mid_sharding(root: Path) -> dict | None:
    """The state to kill in: rank 0 complete, a later rank incomplete with tokens already in its train
    file, no manifest."""
    stage_dirs = list((root / "shards").glob("*"))
    if len(stage_dirs) != 1:
        return None
    stage_dir = stage_dirs[0]
    done = {p.name for p in (stage_dir / "_work" / "logs" / "completions").glob("*")}
    if "00000" not in done or (stage_dir / "manifest.json").exists():
        return None
    for path in sorted((stage_dir / "train").glob("*.bin")):
        with contextlib.suppress(FileNotFoundError):
            if path.stem != "00000" and path.stem not in done and path.stat().st_size > 0:
                return {"dir": stage_dir, "cut": f"train/{path.name}"}
    return None


def kill_mid_sharding(inputs: dict, root: Path, log: Path) -> dict | None:
    """Run the stage in its own process group and SIGKILL the group at the first moment `mid_sharding`.

    Returns that state, or None when the run ended before it came (it must then have succeeded)."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            command(inputs, root),
            cwd=REPO,
            env=runner_env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        state = None
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if (state := mid_sharding(root)) is not None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.005)
        finally:
            if proc.poll() is None and state is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait(timeout=30)
    if state is None:
        tail = log.read_text()[-6000:]
        assert rc == 0, f"the run failed or stalled before a later rank wrote tokens (rc={rc}):\n{tail}"
        return None
    assert rc == -signal.SIGKILL, f"the run was not killed (rc={rc})"
    deadline = time.monotonic() + 15
    while live_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not live_members(proc.pid), "processes of the killed run are still alive"
    return state


def artifact_files(stage_dir: Path) -> dict[str, bytes]:
    """Every file of a shard stage folder outside its scratch space, manifest excepted: path -> content."""
    return {
        str(p.relative_to(stage_dir)): p.read_bytes()
        for p in sorted(stage_dir.rglob("*"))
        if p.is_file() and p.relative_to(stage_dir).parts[0] != "_work" and p.name != "manifest.json"
    }


def test_kill_mid_sharding_then_rerun_gives_the_uninterrupted_shards(inputs, tmp_path):
    for attempt in range(ATTEMPTS):
        crashed = new_root(inputs, tmp_path / f"crashed-{attempt}")
        state = kill_mid_sharding(inputs, crashed, tmp_path / f"killed-{attempt}.log")
        if state is not None:
            break
    else:
        pytest.fail(f"the shard stage finished before the kill in {ATTEMPTS} attempts")

    # Killed mid-sharding: rank 0 done, a later rank cut short, ranks left to run, and no manifest.
    stage_dir = state["dir"]
    cut_size = (stage_dir / state["cut"]).stat().st_size
    completions = stage_dir / "_work" / "logs" / "completions"
    done = sorted(p.name for p in completions.glob("*"))
    assert "00000" in done and len(done) < TASKS, done
    assert not (stage_dir / "manifest.json").exists()
    assert not (stage_dir / "index.json").exists()
    before = {name: (completions / name).stat().st_mtime_ns for name in done}

    rerun = subprocess.run(
        command(inputs, crashed), cwd=REPO, env=runner_env(), capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, f"the rerun failed ({rerun.returncode}):\n{rerun.stderr[-6000:]}"
    resumed = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert resumed["key"] == stage_dir.name
    assert (stage_dir / "manifest.json").exists()
    after = {p.name: p.stat().st_mtime_ns for p in completions.glob("*")}
    assert sorted(after) == [f"{r:05d}" for r in range(TASKS)]
    assert {name: after[name] for name in before} == before, "ranks complete before the kill were run again"

    # An uninterrupted run, in another process and another storage root.
    fresh_root = new_root(inputs, tmp_path / "fresh")
    clean_run = subprocess.run(
        command(inputs, fresh_root), cwd=REPO, env=runner_env(), capture_output=True, text=True, timeout=300
    )
    assert clean_run.returncode == 0, f"the uninterrupted run failed:\n{clean_run.stderr[-6000:]}"
    fresh = json.loads(clean_run.stdout.strip().splitlines()[-1])
    assert fresh["key"] == resumed["key"]

    # Same files, byte for byte.
    got, want = artifact_files(stage_dir), artifact_files(fresh_root / "shards" / fresh["key"])
    shard_names = {f"{split}/{r:05d}.bin" for split in ("train", "val") for r in range(TASKS)}
    assert shard_names | {"index.json"} <= set(want)
    assert sorted(got) == sorted(want)
    for path in sorted(want):
        assert got[path] == want[path], f"{path} differs from the uninterrupted run's"
    assert 0 < cut_size < len(want[state["cut"]]), "the kill did not cut a token file short"
    index = json.loads(want["index.json"])
    assert all(s["tokens"] > 0 for s in index["shards"] if s["split"] == "train"), "a rank had no input"
    for field in ("tokens", "totals", "shards", "dtype"):
        assert resumed["stats"][field] == fresh["stats"][field], field

    # The manifest lists exactly the files on disk outside _work/, with their digests.
    for manifest, files in ((resumed, got), (fresh, want)):
        listed = {f["path"]: (f["bytes"], f["sha256"]) for f in manifest["files"]}
        on_disk = {p: (len(data), hashlib.sha256(data).hexdigest()) for p, data in files.items()}
        assert listed == on_disk

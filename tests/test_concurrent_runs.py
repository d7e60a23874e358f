"""Two `forja tokenizer` runs started at once on one storage root (two terminals, or two machines on one
bucket) both succeed, and what they leave is whole: one folder per stage, every manifest's files present
with their sizes and digests, no half-written file, the corpus readable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, SAMPLE

pytestmark = pytest.mark.slow

ARGS = [
    "--input", str(SAMPLE / "wiki"), "--input", str(SAMPLE / "planted"),
    "--set", "tokenizer.vocab_size=1024", "--set", "corpus.workers=1", "--set", "shards.workers=1",
]  # fmt: skip


def test_two_runs_at_once_on_one_storage_root(tmp_path):
    from tasks.corpus.shards import iter_records
    from tasks.manifest import MANIFEST, Manifest
    from tasks.storage import Storage

    store = tmp_path / "store"
    procs = []
    for name in ("a", "b"):
        # a Prefect home each, as on two machines
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / f"prefect-{name}")}
        cmd = [sys.executable, "-m", "flows.cli", "tokenizer", "--json", "--storage", str(store), *ARGS]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()[-3000:]
    a, b = (json.loads(out) for out, _ in outs)
    assert a == b, "both runs return the one shards artifact (built once, same creation time)"

    storage = Storage(str(store))
    for stage in ("collect", "clean", "dedup", "detox", "stats", "tokenizer", "shards", "report"):
        keys = storage.fs.ls(storage.path(stage), detail=False)
        keys = [k for k in keys if not k.endswith(".json")]  # report/latest.json
        assert len(keys) == 1, f"{stage}: {keys}"
        key = keys[0].rsplit("/", 1)[-1]
        m = Manifest.model_validate_json(storage.read_text(stage, key, MANIFEST))
        assert m.files, stage
        for entry in m.files:
            assert storage.digest(stage, key, entry.path) == (entry.bytes, entry.sha256), (stage, entry.path)
    leftovers = [p for p in storage.fs.find(storage.root) if ".tmp-" in p.rsplit("/", 1)[-1]]
    assert leftovers == []

    detox = storage.fs.ls(storage.path("detox"), detail=False)[0].rsplit("/", 1)[-1]
    docs = list(iter_records(storage.datafolder("detox", detox, "shards")))
    stats_key = storage.fs.ls(storage.path("stats"), detail=False)[0].rsplit("/", 1)[-1]
    stats = json.loads(storage.read_text("stats", stats_key, MANIFEST))["stats"]
    assert len(docs) == stats["documents"] > 0
    assert len({d["id"] for d in docs}) == len(docs)
    pointer = json.loads(storage.read_text("report", "latest.json"))
    assert storage.exists("report", pointer["key"], "report.md")

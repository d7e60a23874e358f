"""The storage layer and the corpus flow against a real S3-speaking server (moto) on 127.0.0.1.

Nothing is mocked in-process: every call goes over HTTP to the server, with the same code path (s3fs,
`AWS_ENDPOINT_URL`) that reaches MinIO, Ceph or AWS. The flows run in a `forja` subprocess, so the datatrove
workers it forks see the AWS_* variables from their first start.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"
BUCKET = "forja-test"
STAGES = ("collect", "clean", "dedup", "detox", "stats")
CLI = [sys.executable, "-m", "flows.cli", "corpus", "--json"]

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    env: dict[str, str]  # what a subprocess needs to reach it

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint, skip_instance_cache=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
                mp.delenv(name, raising=False)
            for name, value in env.items():
                mp.setenv(name, value)
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
            yield S3Server(endpoint, env)
    finally:
        server.stop()


class CorpusRun:
    """`forja corpus --json` in a subprocess; its stdout is the final (stats) manifest, stderr its logs."""

    def __init__(self, storage: str, source: str, s3: S3Server, workdir: Path):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "AWS_"))}
        # A Prefect home per run: two runs at once each start their own temporary server and database.
        prefect = {"PREFECT_HOME": str(workdir / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env |= s3.env | prefect
        workdir.mkdir(parents=True, exist_ok=True)
        self.out, self.err = workdir / "stdout.json", workdir / "stderr.log"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [*CLI, "--storage", storage, "--input", source],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=err,
            )

    def result(self) -> dict:
        try:
            rc = self.proc.wait(timeout=300)
        finally:
            self.stop()
        log = self.err.read_text(errors="replace")
        assert rc == 0, f"forja corpus failed ({rc}):\n{log[-6000:]}"
        return json.loads(self.out.read_text().strip().splitlines()[-1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def corpus_records(storage, manifest: dict) -> dict[str, str]:
    """id -> text of the final corpus that a stats manifest describes (its parts: the detox shards)."""
    from tasks.corpus.shards import iter_records

    records: dict[str, str] = {}
    for part in manifest["stats"]["parts"]:
        assert part["shards"] == storage.url(part["stage"], part["key"], "shards")
        for r in iter_records(storage.datafolder(part["stage"], part["key"], "shards")):
            assert r["id"] not in records, f"document {r['id']} appears twice"
            records[r["id"]] = r["text"]
    return records


def stage_manifests(manifest: dict) -> dict[str, tuple[str, str]]:
    """stage -> (key, url) of every stage behind a stats manifest, itself included."""
    found = {ref["stage"]: (ref["key"], ref["url"]) for ref in manifest["inputs"].values()}
    return found | {manifest["stage"]: (manifest["key"], manifest["url"])}


def snapshot(fs, prefix: str) -> dict[str, tuple]:
    """Every object under a prefix with what changes when it is written again."""
    fs.invalidate_cache()
    return {
        path: (info["size"], info.get("ETag"), str(info.get("LastModified")))
        for path, info in fs.find(prefix, detail=True).items()
    }


def test_corpus_flow_on_s3_matches_local_and_reruns_for_free(s3, tmp_path):
    from tasks.manifest import Manifest, read_manifest
    from tasks.storage import Storage

    fs = s3.fs()
    files = sorted(p for p in SAMPLE.rglob("*") if p.is_file())
    for p in files:
        fs.put_file(str(p), f"{BUCKET}/input/{p.relative_to(SAMPLE).as_posix()}")
    assert len(fs.find(f"{BUCKET}/input")) == len(files)

    local_root, s3_root = tmp_path / "store", f"s3://{BUCKET}/store"
    runs = [  # both at once: the two cores are rarely both busy in one run
        CorpusRun(str(local_root), str(SAMPLE), s3, tmp_path / "local"),
        CorpusRun(s3_root, f"s3://{BUCKET}/input", s3, tmp_path / "s3"),
    ]
    try:
        local, remote = (run.result() for run in runs)
    finally:
        for run in runs:
            run.stop()

    # Every stage wrote its artifact and, last, its manifest on S3 (nothing leaked to a local folder).
    store = Storage(s3_root)
    assert set(stage_manifests(remote)) == set(STAGES)
    for stage, (key, url) in stage_manifests(remote).items():
        assert url == f"{s3_root}/{stage}/{key}"
        assert fs.exists(f"{BUCKET}/store/{stage}/{key}/manifest.json"), stage
        m = read_manifest(store, stage, key)
        assert m is not None and m.files, stage
        for entry in m.files:  # the listed files exist on S3 with the recorded sizes and digests
            assert store.digest(stage, key, entry.path) == (entry.bytes, entry.sha256), entry.path
    assert fs.exists(f"{BUCKET}/store/corpus/latest.json")
    assert fs.exists(f"{BUCKET}/store/stats/{remote['key']}/report.md")
    assert Manifest.model_validate(remote) == read_manifest(store, "stats", remote["key"])
    assert not (REPO / "s3:").exists()

    # The same input read from S3 gives the same corpus as read from a local folder.
    local_docs = corpus_records(Storage(str(local_root)), local)
    remote_docs = corpus_records(store, remote)
    assert remote["stats"]["documents"] == local["stats"]["documents"] == len(local_docs) > 0
    assert len(remote_docs) == len(local_docs)
    assert set(remote_docs) == set(local_docs)
    assert remote_docs == local_docs
    for field in ("bytes", "tokens_estimate", "languages", "funnel"):
        assert remote["stats"][field] == local["stats"][field], field

    # An unchanged rerun finds every manifest on S3 and writes nothing.
    before = snapshot(fs, f"{BUCKET}/store")
    again = CorpusRun(s3_root, f"s3://{BUCKET}/input", s3, tmp_path / "s3-again").result()
    assert stage_manifests(again) == stage_manifests(remote)
    assert again["created_at"] == remote["created_at"]
    assert snapshot(fs, f"{BUCKET}/store") == before


def test_storage_primitives_on_s3(s3):
    from tasks.manifest import read_manifest, run_stage
    from tasks.storage import Storage, open_url

    root = f"s3://{BUCKET}/unit"
    st = Storage(root + "/")
    assert st.root == root and not st.is_local
    assert st.url("a", "/b/") == f"{root}/a/b"
    assert st.path("a", "b.txt") == f"{BUCKET}/unit/a/b.txt"
    assert not st.exists("a", "b.txt")
    assert st.list_files("a") == []

    text = "Año nuevo en Logroño: la cigüeña y el pingüino.\n"
    st.write_bytes_atomic(text.encode(), "a", "b.txt")
    st.write_bytes_atomic(b"first", "a", "deep", "c.bin")
    st.write_bytes_atomic(b"second version", "a", "deep", "c.bin")  # overwrite
    st.write_json_atomic({"ñ": [1, 2]}, "a", "d.json")
    assert st.exists("a", "b.txt")
    assert st.read_text("a", "b.txt") == text
    assert st.read_text("a", "deep", "c.bin") == "second version"
    assert json.loads(st.read_text("a", "d.json")) == {"ñ": [1, 2]}
    assert st.list_files("a") == ["b.txt", "d.json", "deep/c.bin"]
    assert st.list_files("a", "deep") == ["c.bin"]
    data = text.encode()
    assert st.digest("a", "b.txt") == (len(data), hashlib.sha256(data).hexdigest())
    with open_url(st.url("a", "b.txt")) as f:
        assert f.read() == data

    # A fresh client (another process, another machine) sees the same objects.
    fresh = s3.fs()
    assert fresh.cat_file(f"{BUCKET}/unit/a/deep/c.bin") == b"second version"
    assert not [p for p in fresh.find(f"{BUCKET}/unit") if ".tmp" in p]

    # datatrove folders share the storage's filesystem.
    folder = st.datafolder("dt")
    with folder.open("x/0.txt", "wt") as f:
        f.write("from datatrove")
    assert st.read_text("dt", "x", "0.txt") == "from datatrove"
    assert st.list_files("dt") == ["x/0.txt"]

    st.remove("a")
    assert not st.exists("a", "b.txt")
    assert st.list_files("a") == []
    st.remove("a")  # removing what is gone is fine

    # A stage on S3: manifest last, an identical rerun reuses it without building.
    builds: list[str] = []

    def build(out):
        builds.append(out.key)
        out.storage.write_bytes_atomic(b"payload", out.stage, out.key, "part", "0.txt")
        out.storage.write_bytes_atomic(b"scratch", out.stage, out.key, "_work", "log.txt")
        return {"documents": 1}

    first = run_stage(st, "toy", {"n": 1}, {}, "v1", build)
    second = run_stage(st, "toy", {"n": 1}, {}, "v1", build)
    assert builds == [first.key]
    assert second == first == read_manifest(st, "toy", first.key)
    assert first.url == f"{root}/toy/{first.key}"
    assert [(e.path, e.bytes, e.sha256) for e in first.files] == [
        ("part/0.txt", 7, hashlib.sha256(b"payload").hexdigest())
    ]
    assert st.list_files("toy", first.key) == ["_work/log.txt", "manifest.json", "part/0.txt"]


def test_training_checkpoints_mirror_to_s3_and_come_back(s3, tmp_path):
    """A run on S3 storage keeps its finished checkpoints in the bucket while it trains: a new machine
    fetches them and resumes; a checkpoint still being written is not uploaded."""
    from tasks.pretrain import CheckpointSync
    from tasks.storage import Storage

    storage = Storage(f"s3://{BUCKET}/ckpt-sync")
    local = tmp_path / "run" / "checkpoints"
    local.mkdir(parents=True)
    sync = CheckpointSync(storage, "pretrain", "k1", local)
    (local / "step000010.ckpt").write_bytes(b"a" * 1000)
    sync()  # first sight: maybe still being written
    assert not storage.exists("pretrain", "k1", "checkpoints", "step000010.ckpt")
    sync()  # unchanged since the last poll: finished
    assert storage.exists("pretrain", "k1", "checkpoints", "step000010.ckpt")

    (local / "step000020.ckpt").write_bytes(b"b" * 2000)
    (local / "step000010.ckpt").unlink()  # the trainer keeps only the newest
    sync()
    sync()
    listed = storage.fs.ls(storage.path("pretrain", "k1", "checkpoints"))
    remote = sorted(p.rsplit("/", 1)[-1] for p in listed)
    assert remote == ["step000020.ckpt"]

    elsewhere = tmp_path / "new-machine" / "checkpoints"
    CheckpointSync(storage, "pretrain", "k1", elsewhere).restore()
    assert [p.name for p in elsewhere.iterdir()] == ["step000020.ckpt"]
    assert (elsewhere / "step000020.ckpt").read_bytes() == b"b" * 2000

"""Recipes, overrides and the manifest-last artifact rules."""

from __future__ import annotations

import pytest

from tasks.config import load_config
from tasks.errors import ForjaInputError, is_transient
from tasks.manifest import read_manifest, run_stage
from tasks.storage import Storage


def test_overrides_are_typed_and_validated(tmp_path):
    cfg = load_config(
        None, ["corpus.dedup.num_buckets=25", "corpus.collect.inputs=[a, b]", "storage=s3://b/p"]
    )
    assert cfg.corpus.dedup.num_buckets == 25 and cfg.corpus.collect.inputs == ["a", "b"]
    assert cfg.storage == "s3://b/p"
    with pytest.raises(ForjaInputError, match=r"corpus\.dedup\.num_buckets"):
        load_config(None, ["corpus.dedup.num_buckets=zero"])
    with pytest.raises(ForjaInputError, match=r"corpus\.dedup\.nm_buckets: Extra inputs"):
        load_config(None, ["corpus.dedup.nm_buckets=3"])
    with pytest.raises(ForjaInputError, match="expected key.path=value"):
        load_config(None, ["corpus.dedup.num_buckets"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("corpus: [1, 2\n")
    with pytest.raises(ForjaInputError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ForjaInputError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_run_stage_writes_manifest_last_and_caches(tmp_path):
    storage = Storage(str(tmp_path))
    calls = []

    def build(out):
        calls.append(out.key)
        storage.write_bytes_atomic("¡hola, señor!".encode(), "demo", out.key, "data.txt")
        storage.write_bytes_atomic(b"scratch", "demo", out.key, "_work", "tmp.bin")
        return {"n": 1}

    m = run_stage(storage, "demo", {"a": 1}, {}, "v1", build)
    assert [f.path for f in m.files] == ["data.txt"] and m.files[0].bytes == len("¡hola, señor!".encode())
    assert run_stage(storage, "demo", {"a": 1}, {}, "v1", build).created_at == m.created_at
    assert len(calls) == 1
    assert run_stage(storage, "demo", {"a": 2}, {}, "v1", build).key != m.key
    assert run_stage(storage, "demo", {"a": 1}, {}, "v2", build).key != m.key
    downstream = run_stage(storage, "next", {}, {"up": m}, "v1", build)
    assert downstream.inputs["up"].key == m.key


def test_a_failed_build_leaves_no_manifest(tmp_path):
    storage = Storage(str(tmp_path))

    def build(out):
        storage.write_bytes_atomic(b"half", "demo", out.key, "part.txt")
        raise OSError("disk full")

    with pytest.raises(OSError):
        run_stage(storage, "demo", {}, {}, "v1", build)
    key = storage.fs.ls(storage.path("demo"), detail=False)[0].rsplit("/", 1)[-1]
    assert storage.exists("demo", key, "part.txt") and read_manifest(storage, "demo", key) is None


def test_only_transient_faults_are_retried():
    assert is_transient(ConnectionError("reset")) and is_transient(TimeoutError())
    assert not is_transient(ForjaInputError("bad file")) and not is_transient(ValueError("bug"))
    try:
        try:
            raise TimeoutError("read timed out")
        except TimeoutError as inner:
            raise RuntimeError("stage failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)

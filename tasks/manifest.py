"""Content-keyed, manifest-last artifacts: the storage and caching rules of every stage.

A stage writes its files under `<root>/<stage>/<key>/` and `manifest.json` LAST. No manifest means not
done: a killed run leaves nothing a later run mistakes for a finished artifact. The key hashes the stage's
config, its inputs' keys and its code version, so an unchanged rerun finds the manifest and does no work.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from pydantic import BaseModel, Field

from tasks.locks import exclusive
from tasks.provenance import code_commit
from tasks.storage import Storage

MANIFEST = "manifest.json"
WORK_DIR = "_work"  # scratch space of a stage (datatrove logs, MinHash buckets); not part of the artifact

log = logging.getLogger("forja")


class FileEntry(BaseModel):
    path: str  # relative to the stage folder
    bytes: int
    sha256: str


class InputRef(BaseModel):
    stage: str
    key: str
    url: str


class Manifest(BaseModel):
    stage: str
    key: str
    url: str  # the stage folder
    config: dict[str, Any]
    inputs: dict[str, InputRef] = Field(default_factory=dict)  # lineage
    code_version: str
    code_commit: str | None = None  # the checkout that built it (tasks/provenance.py); None in old manifests
    files: list[FileEntry] = Field(default_factory=list)
    stats: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    seconds: float = 0.0

    def files_under(self, prefix: str) -> list[str]:
        """Stored paths (relative to the stage folder) below `prefix/`."""
        return [f.path for f in self.files if f.path.startswith(prefix.rstrip("/") + "/")]


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def code_version(*modules: ModuleType | str) -> str:
    """Hash of the source of the modules that implement a stage: edit the code, the key changes.

    A module may be given by name: its file is read without importing it (importing Lightning to hash
    the trainer's source costs seconds on a run that then reuses every stage)."""
    h = hashlib.sha256()
    for module in modules:
        h.update(_source(module).encode())
    return h.hexdigest()[:12]


def _source(module: ModuleType | str) -> str:
    if not isinstance(module, str):
        return inspect.getsource(module)
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise ModuleNotFoundError(f"no source for module {module}")
    with open(spec.origin, encoding="utf-8", newline=None) as f:  # as inspect.getsource reads it
        return f.read()


def stage_key(stage: str, config: dict[str, Any], inputs: dict[str, str], version: str) -> str:
    payload = canonical_json({"stage": stage, "config": config, "inputs": inputs, "code": version})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def read_manifest(storage: Storage, stage: str, key: str) -> Manifest | None:
    if not storage.exists(stage, key, MANIFEST):
        return None
    return Manifest.model_validate_json(storage.read_text(stage, key, MANIFEST))


class StageDir:
    """Where a stage run writes; handed to the stage's build function."""

    def __init__(self, storage: Storage, stage: str, key: str):
        self.storage, self.stage, self.key = storage, stage, key

    def url(self, *parts: str) -> str:
        return self.storage.url(self.stage, self.key, *parts)

    def path(self, *parts: str) -> str:
        return self.storage.path(self.stage, self.key, *parts)

    def folder(self, *parts: str):
        return self.storage.datafolder(self.stage, self.key, *parts)

    def work(self, *parts: str):
        return self.folder(WORK_DIR, *parts)


def run_stage(
    storage: Storage,
    stage: str,
    config: BaseModel | dict[str, Any],
    inputs: dict[str, Manifest],
    version: str,
    build: Callable[[StageDir], dict[str, Any]],
) -> Manifest:
    """Return the stage's manifest, building the artifact first unless an identical one exists.

    `build` writes the stage's files and returns its stats; the manifest (sizes, digests, stats, config,
    lineage) is written after everything else. A half-built folder from a killed run is resumed by `build`
    (datatrove skips completed tasks) or overwritten; it is never listed as finished.
    """
    cfg = config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
    key = stage_key(stage, cfg, {name: m.key for name, m in inputs.items()}, version)
    if (found := read_manifest(storage, stage, key)) is not None:
        log.info("%s: reusing %s (same config, inputs and code)", stage, found.url)
        return found
    # Another run may be building the same artifact: wait for it, then reuse its manifest.
    with exclusive(storage, stage, key, WORK_DIR, "lock", tidy=True):
        storage.fs.invalidate_cache(storage.path(stage, key))
        if (found := read_manifest(storage, stage, key)) is not None:
            log.info("%s: reusing %s (built by a concurrent run)", stage, found.url)
            return found
        return _build(storage, stage, key, cfg, inputs, version, build)


def _build(
    storage: Storage,
    stage: str,
    key: str,
    cfg: dict[str, Any],
    inputs: dict[str, Manifest],
    version: str,
    build: Callable[[StageDir], dict[str, Any]],
) -> Manifest:
    out = StageDir(storage, stage, key)
    started = time.perf_counter()
    stats = build(out)
    files = [
        FileEntry(path=rel, **dict(zip(("bytes", "sha256"), storage.digest(stage, key, rel), strict=True)))
        for rel in storage.list_files(stage, key)
        if rel != MANIFEST and not rel.startswith(WORK_DIR + "/")
    ]
    manifest = Manifest(
        stage=stage,
        key=key,
        url=out.url(),
        config=cfg,
        inputs={n: InputRef(stage=m.stage, key=m.key, url=m.url) for n, m in inputs.items()},
        code_version=version,
        code_commit=code_commit(),
        files=files,
        stats=stats,
        created_at=datetime.now(UTC),
        seconds=round(time.perf_counter() - started, 3),
    )
    storage.write_bytes_atomic(manifest.model_dump_json(indent=2).encode(), stage, key, MANIFEST)
    log.info("%s: wrote %s", stage, manifest.url)
    return manifest

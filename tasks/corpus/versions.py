"""Corpus versions: what the corpus is now, so a refresh can add to it without redoing it.

`<root>/corpus/versions/NNNN.json` is immutable; `<root>/corpus/latest.json` points at the newest one and
is replaced atomically after the version file exists, so a reader never sees a half-published version.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field

from tasks.manifest import Manifest, read_manifest
from tasks.storage import Storage

ROOT = "corpus"


class CorpusVersion(BaseModel):
    version: int
    corpus: str = Field(description="key of the stats manifest that describes this version")
    dedup: str = Field(description="key of the dedup run whose index covers every document so far")
    parts: list[str] = Field(description="keys of the detox runs whose shards make up the corpus")
    sources: list[str] = Field(description="inputs already collected, as url@fingerprint")
    created_at: datetime


def latest(storage: Storage) -> CorpusVersion | None:
    if not storage.exists(ROOT, "latest.json"):
        return None
    return CorpusVersion.model_validate_json(storage.read_text(ROOT, "latest.json"))


def load(storage: Storage, version: CorpusVersion) -> tuple[Manifest, Manifest, list[Manifest]]:
    """(corpus manifest, dedup manifest, detox manifests) of a version."""
    corpus = read_manifest(storage, "stats", version.corpus)
    dedup = read_manifest(storage, "dedup", version.dedup)
    parts = [read_manifest(storage, "detox", k) for k in version.parts]
    if corpus is None or dedup is None or any(p is None for p in parts):
        raise FileNotFoundError(
            f"corpus version {version.version} refers to artifacts missing from {storage.root}"
        )
    return corpus, dedup, parts  # type: ignore[return-value]


def publish(
    storage: Storage, corpus: Manifest, dedup: Manifest, parts: list[Manifest], sources: list[str]
) -> CorpusVersion:
    """Record `corpus` as the newest version, unless it already is."""
    current = latest(storage)
    if current is not None and current.corpus == corpus.key:
        return current
    version = CorpusVersion(
        version=(current.version + 1) if current else 1,
        corpus=corpus.key,
        dedup=dedup.key,
        parts=[p.key for p in parts],
        sources=sorted(set(sources)),
        created_at=datetime.now(UTC),
    )
    payload = version.model_dump(mode="json")
    storage.write_json_atomic(payload, ROOT, "versions", f"{version.version:04d}.json")
    storage.write_json_atomic(payload, ROOT, "latest.json")
    return version

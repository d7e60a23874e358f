"""The corpus shard format, one place: gzipped JSONL of `{id, text, metadata}`, one file per rank."""

from __future__ import annotations

import json
from collections.abc import Iterator

from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers import JsonlWriter

SHARD_NAME = "${rank}.jsonl.gz"
SHARD_GLOB = "*.jsonl.gz"


def _record(_writer, doc) -> dict:
    return {"id": doc.id, "text": doc.text, "metadata": doc.metadata}


def shard_writer(folder: DataFolder) -> JsonlWriter:
    return JsonlWriter(folder, output_filename=SHARD_NAME, compression="gzip", adapter=_record)


class ShardReader(PipelineStep):
    """Reads the shards of one or more stage outputs; rank r takes every world_size-th file.

    The order is deterministic (folders in the given order, files sorted), which MinHash relies on: its
    signature and filter passes must see each rank's documents in the same order. An empty stage output is
    simply no documents.
    """

    type = "📖 - READER"
    name = "shards"

    def __init__(self, *folders: DataFolder):
        super().__init__()
        self.folders = folders

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        files = [
            (folder, name)
            for folder in self.folders
            for name in sorted(folder.list_files(glob_pattern=SHARD_GLOB))
        ]
        for folder, name in files[rank::world_size]:
            for rec in _read(folder, name):
                self.stat_update("documents")
                yield Document(text=rec["text"], id=rec["id"], metadata=rec.get("metadata") or {})


def shard_reader(*folders: DataFolder) -> ShardReader:
    return ShardReader(*folders)


def _read(folder: DataFolder, name: str) -> Iterator[dict]:
    with folder.open(name, "rt", compression="gzip") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def iter_records(*folders: DataFolder) -> Iterator[dict]:
    """Every record of some shard folders, in shard order (for stats, tests and reports)."""
    for folder in folders:
        for name in sorted(folder.list_files(glob_pattern=SHARD_GLOB)):
            yield from _read(folder, name)

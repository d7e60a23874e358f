"""The corpus shard format, one place: gzipped JSONL of `{id, text, metadata}`, one file per rank."""

from __future__ import annotations

import json
from collections.abc import Iterator

from datatrove.io import DataFolder
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

SHARD_NAME = "${rank}.jsonl.gz"


def _record(_writer, doc) -> dict:
    return {"id": doc.id, "text": doc.text, "metadata": doc.metadata}


def shard_writer(folder: DataFolder) -> JsonlWriter:
    return JsonlWriter(folder, output_filename=SHARD_NAME, compression="gzip", adapter=_record)


class ShardReader(JsonlReader):
    """datatrove's JSONL reader that reads an empty stage output as no documents, not as an error."""

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if not self.data_folder.list_files(glob_pattern=self.glob_pattern):
            return
        yield from super().run(data, rank, world_size)


def shard_reader(folder: DataFolder) -> JsonlReader:
    return ShardReader(folder, glob_pattern="*.jsonl.gz", compression="gzip", add_file_path=False)


def iter_records(folder: DataFolder) -> Iterator[dict]:
    """Every record of a shard folder, in shard order (for stats, tests and reports)."""
    for name in sorted(folder.list_files(glob_pattern="*.jsonl.gz")):
        with folder.open(name, "rt", compression="gzip") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)

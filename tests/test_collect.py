"""Collect: every input kind, stable ids, and bad input as a counted skip or a clear error."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BAD, SAMPLE

from tasks.config import CorpusConfig
from tasks.corpus.collect import collect
from tasks.corpus.shards import iter_records
from tasks.errors import ForjaInputError
from tasks.storage import Storage


def _collect(tmp_path, inputs, **collect_cfg):
    cfg = CorpusConfig.model_validate({"collect": collect_cfg, "tasks": 1, "workers": 1})
    storage = Storage(str(tmp_path / "store"))
    m = collect(storage, cfg, [str(i) for i in inputs])
    docs = {r["id"]: r for r in iter_records(storage.datafolder("collect", m.key, "shards"))}
    problems = json.loads(storage.read_text("collect", m.key, "problems.json"))
    return m, docs, problems


def _reasons(problems, name):
    return [p for p in problems if p["source"].endswith(name)]


def test_malformed_inputs_are_skipped_and_counted(tmp_path):
    m, docs, problems = _collect(tmp_path, [BAD])
    assert m.stats["problems"] == len(problems)
    assert "empty file" in _reasons(problems, "empty.txt")[0]["reason"]
    assert "PNG" in _reasons(problems, "binary.txt")[0]["reason"]
    assert "invalid UTF-8 at byte" in _reasons(problems, "invalid-utf8.txt")[0]["reason"]
    broken = _reasons(problems, "broken-line.jsonl")
    assert len(broken) == 1 and broken[0]["record"] == "line 4" and "invalid JSON" in broken[0]["reason"]
    assert (
        "truncated or corrupt gzip after 5 records" in _reasons(problems, "truncated.jsonl.gz")[0]["reason"]
    )
    assert "truncated WARC" in _reasons(problems, "truncated.warc.gz")[0]["reason"]
    assert len(_reasons(problems, "no-text.jsonl")) >= 3
    assert all("text" in p["reason"] for p in _reasons(problems, "no-text.jsonl"))
    # every good record that could be recovered is there, under its own id
    assert {f"bad-jsonl-{i}" for i in range(1, 6)} <= set(docs)
    assert {f"trunc-jsonl-{i:02d}" for i in range(1, 6)} <= set(docs)
    warc_docs = [d for d in docs.values() if d["metadata"]["source"] == "warc"]
    assert len(warc_docs) == 2, "the two intact pages before the cut"
    assert not any(i.startswith(("empty", "binary", "invalid")) for i in docs)


def test_fail_fast_names_the_file_and_record(tmp_path):
    with pytest.raises(ForjaInputError, match=r"broken-line\.jsonl \(line 4\): invalid JSON"):
        _collect(tmp_path, [BAD / "broken-line.jsonl"], on_bad_input="fail")


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(ForjaInputError, match="does-not-exist.*does not exist"):
        _collect(tmp_path, [tmp_path / "does-not-exist"])


def test_every_input_kind_with_stable_ids(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "nota.md").write_text("# Año nuevo\n\n¿Qué tal? ¡Muy bien, señor Muñoz!\n", encoding="utf-8")
    (src / "note.txt").write_text("Plain English text about the weather in the north.\n")
    rows = [
        {"id": "p-1", "text": "Parquet row one, with enough words to be a document."},
        {"id": "p-2", "text": "Segunda fila del archivo parquet, con acentos: camión, árbol."},
    ]
    pq.write_table(pa.Table.from_pylist(rows), src / "rows.parquet")
    with gzip.open(src / "recs.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"id": "j-1", "text": "A gzipped record.", "metadata": {"topic": "x"}}) + "\n")
        f.write(json.dumps({"text": "A record without an id."}) + "\n")
    for name in ("pages.warc.gz", "whirlwind.warc.wet.gz"):
        (src / name).write_bytes((SAMPLE / "web" / name).read_bytes())
    (src / "ignored.pdf").write_bytes(b"%PDF-1.4")

    m, docs, problems = _collect(tmp_path, [src])
    assert docs["nota.md"]["text"].startswith("# Año nuevo") and docs["nota.md"]["metadata"]["lang"] == "es"
    assert docs["note.txt"]["metadata"] == {"source": "file", "path": "note.txt", "lang": "en"}
    assert docs["p-2"]["metadata"]["source"] == "parquet" and "camión" in docs["p-2"]["text"]
    assert docs["j-1"]["metadata"]["topic"] == "x"
    assert "recs.jsonl.gz#line 2" in docs
    warc = [d for d in docs.values() if d["metadata"]["source"] == "warc"]
    assert len(warc) >= 30 and all(d["metadata"]["url"].startswith("http") for d in warc)
    assert not any("<nav" in d["text"] or "<div" in d["text"] for d in warc), "HTML extracted to text"
    assert any(d["metadata"]["source"] == "wet" for d in docs.values())
    assert [p["source"] for p in problems] == [str(src / "ignored.pdf")]
    assert m.stats["files_by_kind"] == {"text": 2, "parquet": 1, "jsonl": 1, "warc": 1, "wet": 1}

    again, _, _ = _collect(tmp_path, [src])
    assert again.key == m.key and again.created_at == m.created_at, "same input, same artifact"
    (src / "note.txt").write_text("Changed content makes a new collection.\n")
    changed, _, _ = _collect(tmp_path, [src])
    assert changed.key != m.key

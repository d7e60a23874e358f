"""Nightly refresh: only new input is collected, and it is deduplicated against the whole corpus."""

from __future__ import annotations

import shutil

from conftest import SAMPLE, TRUTH

from tasks.corpus import versions
from tasks.corpus.shards import iter_records
from tasks.corpus.stats import shard_folders
from tasks.storage import Storage


def _ids(storage, corpus) -> list[str]:
    return [r["id"] for folder in shard_folders(storage, corpus) for r in iter_records(folder)]


def test_refresh_adds_only_new_unique_documents(tmp_path, prefect_server, corpus_cfg):
    from flows.corpus import corpus_flow, corpus_refresh

    inbox = tmp_path / "inbox"
    shutil.copytree(SAMPLE, inbox, ignore=shutil.ignore_patterns("planted", "es"))
    store = str(tmp_path / "store")
    storage = Storage(store)

    v1 = corpus_flow(corpus_cfg, store, [str(inbox)])
    ids_v1 = set(_ids(storage, v1))
    assert versions.latest(storage).version == 1

    # New files land in the same folder: duplicates of what the corpus has, plus new Spanish chapters.
    shutil.copytree(SAMPLE / "planted", inbox / "planted")
    shutil.copytree(SAMPLE / "books" / "es", inbox / "books" / "es")
    v2 = corpus_refresh(corpus_cfg, store, [str(inbox)])
    latest = versions.latest(storage)
    assert latest.version == 2 and latest.corpus == v2.key

    collected = v2.stats["funnel"][0]
    n_new_files = len(list((inbox / "planted").iterdir())) + len(list((inbox / "books" / "es").iterdir()))
    assert collected["documents_in"] < 200, "only the new files are collected"
    assert n_new_files >= 27

    ids_v2 = _ids(storage, v2)
    assert len(ids_v2) == len(set(ids_v2)), "no document twice across versions"
    assert ids_v1 <= set(ids_v2), "earlier versions are kept as they were"
    final = set(ids_v2)
    for pair in TRUTH["exact"] + TRUTH["near"]:
        if pair["of"] in ids_v1:  # the original was already in the corpus: the new copy must go
            assert pair["id"] not in final, pair
    new_chapters = {f"books/es/{p.name}" for p in (inbox / "books" / "es").iterdir()}
    planted_bases = {p["of"] for p in TRUTH["exact"] + TRUTH["near"]}
    assert {c for c in new_chapters if c not in planted_bases} <= final
    assert not set(TRUTH["toxic"]) & final
    assert v2.stats["documents"] == len(ids_v2) > len(ids_v1)

    # Nothing new: the same corpus, no new version.
    again = corpus_refresh(corpus_cfg, store, [str(inbox)])
    assert again.key == v2.key and versions.latest(storage).version == 2

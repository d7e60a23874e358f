"""The corpus flow on the bundled sample: what it must remove, what it must keep, what it reports."""

from __future__ import annotations

import json

from conftest import TRUTH, stage_records
from datatrove.utils.text import TextNormConfig, simplify_text


def _shingles(text: str, n: int = 5) -> set[str]:
    words = simplify_text(text, TextNormConfig()).split()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_planted_exact_duplicates_all_removed(sample_corpus):
    storage, _ = sample_corpus
    cleaned, deduped = stage_records(storage, "clean"), stage_records(storage, "dedup")
    pairs = [p for p in TRUTH["exact"] if p["id"] in cleaned and p["of"] in cleaned]
    assert len(pairs) == len(TRUTH["exact"]), "planted duplicates must reach dedup"
    kept_both = [p for p in pairs if p["id"] in deduped and p["of"] in deduped]
    kept_none = [p for p in pairs if p["id"] not in deduped and p["of"] not in deduped]
    assert kept_both == [] and kept_none == []


def test_planted_near_duplicates_removed(sample_corpus):
    storage, _ = sample_corpus
    cleaned, deduped = stage_records(storage, "clean"), stage_records(storage, "dedup")
    pairs = [p for p in TRUTH["near"] if p["id"] in cleaned and p["of"] in cleaned]
    assert len(pairs) >= 0.9 * len(TRUTH["near"])
    assert all(p["jaccard"] >= 0.8 for p in pairs)
    caught = [p for p in pairs if (p["id"] in deduped) != (p["of"] in deduped)]
    assert len(caught) / len(pairs) >= 0.97
    assert all(p["id"] in deduped or p["of"] in deduped for p in pairs), "one copy of each pair stays"


def test_distinct_documents_survive_dedup(sample_corpus):
    storage, _ = sample_corpus
    cleaned, deduped = stage_records(storage, "clean"), stage_records(storage, "dedup")
    planted = {p[k] for p in TRUTH["exact"] + TRUTH["near"] for k in ("id", "of")}
    shingles = {i: _shingles(r["text"]) for i, r in cleaned.items()}

    def max_jaccard(i: str) -> float:
        a = shingles[i]
        return max((len(a & b) / len(a | b) for j, b in shingles.items() if j != i and a and b), default=0.0)

    # Web pages of the sample quote Wikipedia paragraphs that are also documents of their own: those
    # overlaps are real partial duplicates, so "distinct" means no other document shares >= 30 % of shingles.
    distinct = [i for i in cleaned if i not in planted and max_jaccard(i) < 0.3]
    assert len(distinct) > 300
    kept = sum(i in deduped for i in distinct)
    assert kept / len(distinct) >= 0.995, [i for i in distinct if i not in deduped]


def test_planted_toxic_documents_removed_and_clean_text_kept(sample_corpus):
    storage, _ = sample_corpus
    before, after = stage_records(storage, "dedup"), stage_records(storage, "detox")
    removed = stage_records(storage, "detox", "removed/toxicity")
    assert set(TRUTH["toxic"]) <= set(before), "toxic documents must reach the toxicity filter"
    assert not set(TRUTH["toxic"]) & set(after)
    assert all(r["metadata"]["toxicity_wordlist"] >= 0.02 for r in removed.values())
    false_positives = set(removed) - set(TRUTH["toxic"])
    assert len(false_positives) <= 0.01 * len(before)
    langs = {before[i]["metadata"]["lang"] for i in TRUTH["toxic"]}
    assert langs == {"en", "es"}


def test_low_quality_documents_removed_by_clean(sample_corpus):
    storage, _ = sample_corpus
    collected, cleaned = stage_records(storage, "collect"), stage_records(storage, "clean")
    assert set(TRUTH["lowquality"]) <= set(collected)
    assert not set(TRUTH["lowquality"]) & set(cleaned)


def test_spanish_survives_cleaning_intact(sample_corpus):
    storage, _ = sample_corpus
    cleaned = stage_records(storage, "clean")
    es = [r for r in cleaned.values() if r["metadata"]["lang"] == "es"]
    assert len(es) > 150
    text = " ".join(r["text"] for r in es)
    for ch in "ñáéíóú¿¡":
        assert ch in text
    assert "\ufffd" not in text


def test_stats_report(sample_corpus):
    storage, corpus = sample_corpus
    stats = json.loads(storage.read_text("stats", corpus.key, "stats.json"))
    final = stage_records(storage, "detox")
    assert stats["documents"] == len(final) == corpus.stats["documents"]
    assert stats["bytes"] == sum(len(r["text"].encode()) for r in final.values())
    assert 2.5 < stats["bytes_per_token_measured"] < 6
    assert stats["estimated_size_bytes"] == int(stats["tokens_estimate"] * 4.0)
    assert set(stats["languages"]) >= {"en", "es"}
    assert sum(v["documents"] for v in stats["languages"].values()) == stats["documents"]
    funnel = {row["stage"]: row for row in stats["funnel"]}
    assert list(funnel) == ["collect", "clean", "dedup", "detox"]
    assert funnel["detox"]["documents_out"] == stats["documents"]
    for a, b in zip(stats["funnel"], stats["funnel"][1:], strict=False):
        assert a["documents_out"] == b["documents_in"]
    report = storage.read_text("stats", corpus.key, "report.md")
    assert "| dedup |" in report and "| es |" in report


def test_manifests_have_lineage_and_digests(sample_corpus):
    storage, corpus = sample_corpus
    from tasks.manifest import read_manifest

    detox = read_manifest(storage, "detox", corpus.inputs["part_0"].key)
    dedup = read_manifest(storage, "dedup", detox.inputs["deduped"].key)
    assert dedup.inputs["cleaned"].stage == "clean"
    for entry in detox.files:
        assert storage.digest("detox", detox.key, entry.path) == (entry.bytes, entry.sha256)
    assert not any(f.path.startswith("_work/") for f in dedup.files)
    assert any(f.path.startswith("index/minhash/") for f in dedup.files)


def test_rerun_does_no_work(sample_corpus, corpus_cfg):
    from flows.corpus import corpus_flow

    storage, corpus = sample_corpus
    again = corpus_flow(corpus_cfg, storage.root)
    assert again.key == corpus.key and again.created_at == corpus.created_at


def test_report_and_tables_are_published_in_prefect(sample_corpus):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["corpus-report", "corpus-funnel", "corpus-clean-filters"])
            )
        )
    by_key = {a.key: a for a in found}
    assert set(by_key) == {"corpus-report", "corpus-funnel", "corpus-clean-filters"}
    assert "# Corpus report" in by_key["corpus-report"].data and by_key["corpus-report"].type == "markdown"
    assert by_key["corpus-funnel"].type == "table"

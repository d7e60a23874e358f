"""The report card: generic over stages (synthetic manifests), and from real pipeline runs, together with
caching across stages: an unchanged rerun of the whole pipeline does no work, a fine-tuning change reruns
that stage and what follows it, nothing before."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from conftest import REPO

from tasks import report
from tasks.manifest import FileEntry, InputRef, Manifest

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _m(stage: str, key: str, inputs: list[Manifest] = (), files=(), minutes=0, **stats) -> Manifest:
    return Manifest(
        stage=stage,
        key=key,
        url=f"/store/{stage}/{key}",
        config={"stage": stage},
        inputs={m.stage: InputRef(stage=m.stage, key=m.key, url=m.url) for m in inputs},
        code_version="abc123",
        code_commit="git:0123456789abcdef-dirty",
        files=[FileEntry(path=p, bytes=10, sha256="0" * 64) for p in files],
        stats=stats,
        created_at=T0 + timedelta(minutes=minutes),
        seconds=12.5,
    )


def test_render_is_generic_over_stages():
    tok = _m("tokenizer", "t" * 16, vocab_size=300, model_type="char", minutes=1)
    base = _m(
        "pretrain", "p" * 16, [tok], ["export/model.safetensors", "loss.png"], 2, val_loss=2.5, steps=10
    )
    evaluations = [{"step": i, "reward": i / 10} for i in range(15)]
    rl = _m(
        "rl",
        "r" * 16,
        [base, tok],
        ["export/adapter_model.safetensors", "reward.png"],
        3,
        reward=0.75,
        evaluations=evaluations,
        samples={"¿Qué es?": "Una prueba."},
        nested={"heldout": {"accuracy": 0.5}},
    )
    mystery = _m("mystery", "m" * 16, [rl], minutes=4, note="unknown stages render too")
    by_key = {m.key: m for m in (tok, base, rl)}
    manifests = report.lineage([mystery], lambda ref: by_key.get(ref.key))
    assert [m.stage for m in report.ordered(manifests)] == ["tokenizer", "pretrain", "rl", "mystery"]

    text = report.render([mystery], manifests, lambda m, p: f"pics/{m.stage}/{p}", "Card")
    assert text.startswith("# Card\n")
    assert (
        "![rl reward.png](pics/rl/reward.png)" in text
        and "![pretrain loss.png](pics/pretrain/loss.png)" in text
    )
    assert "| rl | `rrrrrrrr` | reward | 0.75 |" in text  # key numbers
    assert "| rl | `rrrrrrrr` | nested.heldout.accuracy | 0.5 |" in text
    assert "(15 rows; first and last 6 shown)" in text
    assert "- `'¿Qué es?'` → Una prueba." in text
    assert "## mystery" in text and "unknown stages render too" in text
    # lineage: both models, with what they were made from and the commit that built them
    assert "**rl** `rrrrrrrr`" in text and "- tokenizer: `tttttttt` (char 300 pieces)" in text
    assert "- pretrain: `pppppppp` (val_loss 2.5)" in text
    assert "git 0123456789 (uncommitted changes)" in text
    assert "| mystery | `mmmmmmmm` |" in text and "4 artifacts; building them took 50.0 s" in text
    # no corpus, no tokenizer section without their stats
    assert "## Corpus" not in text

    data = report.summary([mystery], manifests)
    assert [m["stage"] for m in data["models"]] == ["pretrain", "rl"]
    assert data["models"][1]["from"][:2] == ["pretrain/" + "p" * 16, "tokenizer/" + "t" * 16]


def _cfg(storage, corpus_cfg, *sets):
    from tasks.config import load_config

    # the settings of test_pipeline.py: a rerun there and here shares the stages
    small = [
        "pretrain.max_steps=20",
        "pretrain.val_every=10",
        "pretrain.ckpt_every=10",
        "pretrain.model={arch: llama, n_layer: 2, n_head: 4, n_kv_head: 2, d_model: 64, context: 64}",
    ]
    # post-training and evaluation as short as they go: this checks the wiring, not what they learn
    short = [
        "eval.limit=4",
        "eval.max_new_tokens=8",
        "sft.max_steps=6",
        "sft.val_every=3",
        "sft.ckpt_every=3",
        "dpo.max_steps=4",
        "dpo.val_every=2",
        "dpo.ckpt_every=2",
        "reward_model.max_steps=4",
        "reward_model.val_every=2",
        "reward_model.ckpt_every=2",
        "rl.steps=2",
        "rl.val_every=1",
        "rl.ckpt_every=1",
        "rl.group_size=2",
        "rl.prompts_per_step=2",
        "rl.max_new_tokens=8",
        "rl.max_val_prompts=4",
        "rl.toy.count=50",
    ]
    cfg = load_config(REPO / "configs" / "tiny.yaml", [*small, *short, *sets])
    return cfg.model_copy(update={"storage": storage.root, "corpus": corpus_cfg})


def _built_since(summary: dict, since: datetime) -> set[str]:
    return {s["stage"] for s in summary["stages"] if datetime.fromisoformat(s["created_at"]) >= since}


def test_caching_across_stages_and_the_report_card(sample_corpus, corpus_cfg):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from flows.pipeline import pipeline
    from tasks.report_steps import latest_report, picture_name

    storage, corpus = sample_corpus
    cfg = _cfg(storage, corpus_cfg)
    first = pipeline(cfg)

    after_pretrain = ("eval", "sft", "dpo", "reward_model", "rl", "final_eval")
    assert set(after_pretrain) <= set(first), "the whole pipeline ran"
    assert first["sft"].inputs["pretrain"].key == first["pretrain"].key
    assert first["rl"].inputs["dpo"].key == first["dpo"].key

    started = datetime.now(UTC)
    again = pipeline(cfg)
    assert {k: m.key for k, m in again.items()} == {k: m.key for k, m in first.items()}
    summary = json.loads(storage.read_text("report", again["report"].key, "report.json"))
    assert len(summary["stages"]) == 14 and _built_since(summary, started) == set(), "no work"

    started = datetime.now(UTC)
    changed = pipeline(_cfg(storage, corpus_cfg, "sft.lora.r=4"))
    summary = json.loads(storage.read_text("report", changed["report"].key, "report.json"))
    assert _built_since(summary, started) == {"sft", "dpo", "reward_model", "rl", "eval"}
    for stage in ("corpus", "tokenizer", "shards", "pretrain", "eval"):
        assert changed[stage].key == first[stage].key, stage
    for stage in ("sft", "dpo", "reward_model", "rl", "final_eval", "report"):
        assert changed[stage].key != first[stage].key, stage
    assert latest_report(storage) == changed["report"].stats["report"]

    # the report card of the changed run, with its real numbers
    rep = changed["report"]
    text = storage.read_text("report", rep.key, "report.md")
    for section in ("## Key numbers", "## Lineage", "## Corpus", "## Tokenizer", "## pretrain", "## Stages"):
        assert section in text, section
    pre, tok = changed["pretrain"], changed["tokenizer"]
    assert f"**{corpus.stats['documents']:,} documents**" in text
    funnel = corpus.stats["funnel"]
    assert f"| dedup | {funnel[2]['documents_in']:,} | {funnel[2]['documents_out']:,} |" in text
    assert "bpe 4,096 pieces" in text
    en = tok.stats["heldout"]["en"]
    assert f"| en | {en['documents']} | {report.cell(en['bytes_per_token'])} |" in text
    assert f"| pretrain | `{pre.key[:8]}` | val_loss | {report.cell(pre.stats['val_loss'])} |" in text
    lineage = text.split("## Lineage", 1)[1].split("## Corpus", 1)[0]
    assert f"stats `{corpus.key[:8]}`" in lineage and f"tokenizer: `{tok.key[:8]}`" in lineage
    assert "- code: git " in lineage and f"stage code hash `{pre.code_version}`" in lineage
    picture = picture_name(pre, "loss.png")
    assert f"]({picture})" in text and storage.exists("report", rep.key, picture)
    stages = text.split("## Stages", 1)[1]
    assert all(f"| {s} | `" in stages for s in ("collect", "clean", "dedup", "detox", "stats", "shards"))

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["forja-report"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    assert arts and arts[0].type == "markdown"
    assert "# Forja report card" in arts[0].data and "data:image/png;base64," in arts[0].data
    assert f"tokenizer: `{tok.key[:8]}`" in arts[0].data

"""The pipeline flow through pretraining, on the sample, with Prefect: artifacts, export, caching."""

from __future__ import annotations

import math

from conftest import REPO


def test_pipeline_until_pretrain(sample_corpus, corpus_cfg):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flows.pipeline import pipeline
    from tasks.config import load_config

    storage, corpus = sample_corpus
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [
            "pretrain.max_steps=20",
            "pretrain.val_every=10",
            "pretrain.ckpt_every=10",
            "pretrain.model={arch: llama, n_layer: 2, n_head: 4, n_kv_head: 2, d_model: 64, context: 64}",
        ],
    ).model_copy(update={"storage": storage.root, "corpus": corpus_cfg})
    results = pipeline(cfg, until="pretrain")
    assert results["corpus"].key == corpus.key, "the corpus stage was reused"
    pre = results["pretrain"]
    assert pre.inputs["shards"].key == results["shards"].key
    assert pre.stats["steps"] == 20 and math.isfinite(pre.stats["val_loss"]) and pre.stats["val_bpb"] > 0
    assert set(pre.stats["samples"]) == {"The ", "El "}

    export = storage.path("pretrain", pre.key, "export")
    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export)
    ids = tok("¿Dónde está la biblioteca?", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 5

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["pretrain-report"]))
        )
    assert arts and "data:image/png;base64," in arts[0].data

    again = pipeline(cfg, until="pretrain")
    assert again["pretrain"].key == pre.key and again["pretrain"].created_at == pre.created_at

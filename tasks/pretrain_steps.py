"""Pretraining as a Prefect task: the loss curve as a picture and the metrics as a table in the UI."""

from __future__ import annotations

import base64

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.config import PretrainConfig
from tasks.manifest import Manifest
from tasks.prefect_utils import stage_task
from tasks.pretrain import STAGE, pretrain
from tasks.storage import Storage


def _pretrain(storage: Storage, cfg: PretrainConfig, tokenizer: Manifest, shards: Manifest) -> Manifest:
    m = pretrain(storage, cfg, tokenizer, shards)
    s = m.stats
    png = base64.b64encode(storage.fs.cat_file(storage.path(STAGE, m.key, "loss.png"))).decode()
    samples = "\n".join(f"- `{p!r}` → {text!r}" for p, text in s.get("samples", {}).items())
    create_markdown_artifact(
        key="pretrain-report",
        markdown=f"# Pretraining\n\n![loss curve](data:image/png;base64,{png})\n\n"
        f"val loss **{s['val_loss']:.4f}**, {s.get('val_bpb') or float('nan'):.4f} bits/byte after "
        f"{s['steps']} steps; {s['params']:,} parameters; {s.get('tokens_per_s') or 0:,.0f} tokens/s.\n\n"
        f"Samples at the last evaluation:\n\n{samples}\n\nExport (transformers): `{s['export']}`\n",
        description="Loss curve, metrics and samples of the pretraining run",
    )
    rows = [
        {k: v for k, v in r.items() if k in ("step", "train/loss", "val/loss", "val/bpb")}
        for r in s.get("evaluations", [])
    ]
    if rows:
        create_table_artifact(
            key="pretrain-evaluations", table=rows, description="Validation at each evaluation"
        )
    return m


pretrain_task = stage_task(_pretrain, "pretrain", retries=1)

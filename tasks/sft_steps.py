"""Fine-tuning as a Prefect task: the loss curve, metrics, samples and skipped records in the UI."""

from __future__ import annotations

import base64

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.config import SFTConfig
from tasks.manifest import Manifest
from tasks.prefect_utils import stage_task
from tasks.sft import STAGE, sft
from tasks.storage import Storage


def _fmt(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def report_markdown(m: Manifest, loss_png: bytes) -> str:
    s, data = m.stats, m.stats["data"]
    png = base64.b64encode(loss_png).decode()
    skipped = ", ".join(f"{k}: {v}" for k, v in data["skipped"].items()) or "none"
    before = s.get("samples_before", {})
    samples = "\n".join(
        f"| {p} | {before.get(p, '')!r} | {reply!r} |" for p, reply in s.get("samples", {}).items()
    )
    return (
        f"# Supervised fine-tuning (LoRA)\n\n![loss curve](data:image/png;base64,{png})\n\n"
        f"Assistant-token validation loss **{_fmt(s.get('val_loss_start'))} → {_fmt(s.get('val_loss'))}** "
        f"(token accuracy {_fmt(s.get('val_token_acc'))}) after {s['steps']} steps; "
        f"{s['trainable_params']:,} of {s['params']:,} parameters trained.\n\n"
        f"Data: {data['train']['examples']:,} training conversations "
        f"({data['train']['answer_tokens']:,} answer tokens), "
        f"{(data['val'] or {}).get('examples', 0):,} held out; {data['truncated']} cut at "
        f"{data['max_length']} tokens; skipped {skipped} (details in `data/skipped.json`).\n\n"
        f"| prompt | base model | fine-tuned |\n|---|---|---|\n{samples}\n\n"
        f"Base: `{s['base']}`  \nAdapter (peft): `{s['adapter']}`  \nMerged export (transformers): "
        f"`{s['export']}`\n"
    )


def _sft(
    storage: Storage,
    cfg: SFTConfig,
    base: Manifest,
    tokenizer: Manifest | None = None,
    inputs: list[str] | None = None,
) -> Manifest:
    m = sft(storage, cfg, base, tokenizer, inputs)
    png = storage.fs.cat_file(storage.path(STAGE, m.key, "loss.png"))
    create_markdown_artifact(
        key="sft-report", markdown=report_markdown(m, png), description="Fine-tuning: loss, data, samples"
    )
    rows = [
        {k: r.get(k) for k in ("step", "val/loss", "val/token_acc")} for r in m.stats.get("evaluations", [])
    ]
    if rows:
        create_table_artifact(key="sft-evaluations", table=rows, description="Validation at each evaluation")
    return m


sft_task = stage_task(_sft, STAGE, retries=1)

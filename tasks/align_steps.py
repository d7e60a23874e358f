"""Preference tuning as Prefect tasks: curves (loss, reward margin, accuracy), evaluations, data in the UI."""

from __future__ import annotations

import base64

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.align import dpo, reward_model
from tasks.config import DPOConfig, PairDataSection, RewardModelConfig
from tasks.manifest import Manifest
from tasks.prefect_utils import stage_task
from tasks.storage import Storage

TITLES = {"dpo": "Preference tuning (DPO, LoRA)", "reward_model": "Reward model (Bradley-Terry)"}


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def report_markdown(m: Manifest, curves_png: bytes) -> str:
    s, data = m.stats, m.stats["data"]
    png = base64.b64encode(curves_png).decode()
    skipped = ", ".join(f"{k}: {v}" for k, v in data["skipped"].items()) or "none"
    languages = ", ".join(f"{k}: {v}" for k, v in data["languages"].items())
    lines = [
        f"# {TITLES[m.stage]}\n",
        f"![loss, reward margin and preference accuracy](data:image/png;base64,{png})\n",
        f"Held-out preference accuracy **{_fmt(s.get('val_accuracy'))}**, reward margin "
        f"{_fmt(s.get('val_margin'))}, loss {_fmt(s.get('val_loss_start'))} → {_fmt(s.get('val_loss'))} "
        f"after {s['steps']} steps; {s['trainable_params']:,} of {s['params']:,} parameters trained.\n",
        f"Pairs: {data['train']['pairs']:,} for training, {(data['val'] or {}).get('pairs', 0):,} held out "
        f"({languages}); {data['truncated']} cut at {data['max_length']} tokens; skipped {skipped} "
        "(details in `data/skipped.json`).\n",
    ]
    if m.stage == "dpo":
        lines.append(
            f"Reference: the base with the adapter disabled (beta {s['beta']}; largest logit difference from "
            f"the base loaded afresh: {s['reference_max_abs_diff']:.2g}).\n"
        )
        before = s.get("samples_before", {})
        rows = "\n".join(f"| {p} | {before.get(p, '')!r} | {r!r} |" for p, r in s.get("samples", {}).items())
        if rows:
            lines.append(f"| prompt | base | tuned |\n|---|---|---|\n{rows}\n")
    else:
        lines.append(
            f"Rewards on held-out answers: mean {_fmt(s.get('reward_mean'))}, spread "
            f"{_fmt(s.get('reward_std'))}. Load with `models.reward.load_reward_model('{m.url}')`.\n"
        )
    lines.append(f"Base ({s['base_stage']}): `{s['base']}`  \nAdapter (peft): `{s['adapter']}`  \n")
    lines.append(f"Merged export (transformers): `{s['export']}`\n")
    return "\n".join(lines)


def publish(storage: Storage, m: Manifest) -> None:
    key = m.stage.replace("_", "-")
    png = storage.fs.cat_file(storage.path(m.stage, m.key, "curves.png"))
    create_markdown_artifact(
        key=f"{key}-report", markdown=report_markdown(m, png), description=f"{TITLES[m.stage]}: curves, data"
    )
    columns = ("step", "val/loss", "val/accuracy", "val/margin")
    rows = [{k: r.get(k) for k in columns} for r in m.stats.get("evaluations", [])]
    if rows:
        create_table_artifact(
            key=f"{key}-evaluations", table=rows, description="Held-out pairs per evaluation"
        )


def _dpo(
    storage: Storage,
    cfg: DPOConfig,
    base: Manifest,
    tokenizer: Manifest | None = None,
    inputs: list[str] | None = None,
) -> Manifest:
    m = dpo(storage, cfg, base, tokenizer, inputs)
    publish(storage, m)
    return m


def _reward_model(
    storage: Storage,
    cfg: RewardModelConfig,
    base: Manifest,
    pairs: PairDataSection,
    tokenizer: Manifest | None = None,
    inputs: list[str] | None = None,
) -> Manifest:
    m = reward_model(storage, cfg, base, pairs, tokenizer, inputs)
    publish(storage, m)
    return m


dpo_task = stage_task(_dpo, "dpo", retries=1)
reward_model_task = stage_task(_reward_model, "reward_model", retries=1)

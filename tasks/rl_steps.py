"""RL (GRPO) as a Prefect task: reward, accuracy, KL and loss curves, held-out answers and skips in the UI."""

from __future__ import annotations

import base64

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.config import RLConfig
from tasks.manifest import Manifest
from tasks.prefect_utils import stage_task
from tasks.rl import STAGE, rl
from tasks.storage import Storage


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ⏎ ")


def report_markdown(m: Manifest, curves_png: bytes) -> str:
    s, data = m.stats, m.stats["data"]
    png = base64.b64encode(curves_png).decode()
    skipped = ", ".join(f"{k}: {v}" for k, v in data["skipped"].items()) or "none"
    rewards = " + ".join(f"{r['weight']:g} × {r['name']}" for r in s["rewards"])
    before = {e["prompt"]: e for e in s.get("samples_before", [])}
    rows = "\n".join(
        f"| {_cell(e['prompt'])} | {_cell(e.get('reference'))} "
        f"| {_cell(before.get(e['prompt'], {}).get('completion', ''))} "
        f"| {_cell(e['completion'])} | {_fmt(e['reward'], '.2f')} |"
        for e in s.get("samples", [])
    )
    accuracy = ""
    if s.get("val_accuracy") is not None:
        accuracy = f" (accuracy {_fmt(s.get('val_accuracy_start'))} → {_fmt(s.get('val_accuracy'))})"
    return (
        f"# RL with verifiable rewards (GRPO)\n\n![curves](data:image/png;base64,{png})\n\n"
        f"Held-out mean reward, greedy: **{_fmt(s.get('val_reward_start'))} → {_fmt(s.get('val_reward'))}**"
        f"{accuracy} after {s['steps']} steps ({s['optimizer_steps']} optimiser steps); reward = {rewards}; "
        f"{s['trainable_params']:,} of {s['params']:,} parameters trained.\n\n"
        f"Prompts: {data['train']['prompts']:,} for training, {(data.get('val') or {}).get('prompts', 0):,} "
        f"held out (languages {data['languages']}); skipped {skipped} (details in `data/skipped.json`).\n\n"
        f"| prompt | reference | before | after | reward |\n|---|---|---|---|---|\n{rows}\n\n"
        f"Base: `{s['base']}`  \nAdapter (peft): `{s['adapter']}`  \nMerged export (transformers): "
        f"`{s['export']}`\n"
    )


def _rl(
    storage: Storage,
    cfg: RLConfig,
    base: Manifest,
    tokenizer: Manifest | None = None,
    inputs: list[str] | None = None,
) -> Manifest:
    m = rl(storage, cfg, base, tokenizer, inputs)
    png = storage.fs.cat_file(storage.path(STAGE, m.key, "curves.png"))
    create_markdown_artifact(
        key="rl-report", markdown=report_markdown(m, png), description="GRPO: curves, data, held-out answers"
    )
    keys = ("step", "train/reward", "train/accuracy", "train/kl", "train/loss", "val/reward", "val/accuracy")
    rows = [{k: r.get(k) for k in keys} for r in m.stats.get("curve", [])]
    if rows:
        create_table_artifact(
            key="rl-curves", table=rows, description="Reward, accuracy, KL and loss per step"
        )
    return m


rl_task = stage_task(_rl, STAGE, retries=1)

"""RL with rule-based (or learned) rewards as a stage: prompts -> GRPO on a LoRA adapter, in its own process.

The policy starts from the base stage's merged export (an sft, dpo or pretrain stage) with a fresh adapter;
the adapter disabled is the KL reference, so the reference is exactly the model the stage started from.
The key hashes the settings, the base's and tokenizer's keys, the prompt files' digests (not their paths)
and the reward model's key (a stage) or files' digests (a plain folder): the same inputs find the finished
run. Writes `data/` (train/val prompts, `skipped.json`), `adapter/`, `export/` (merged, transformers-
loadable), `checkpoints/`, `logs/`, `metrics.json`, `samples.json` (held-out answers per evaluation),
`curves.png` (reward, accuracy, KL, loss), `loss.png`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from tasks import rl_data
from tasks.align import base_manifest, check_training
from tasks.config import PLACEMENT_FIELDS, RLConfig
from tasks.errors import ForjaInputError
from tasks.launcher import cache_root, local_copy, run_training
from tasks.manifest import MANIFEST, Manifest, StageDir, code_version, run_stage
from tasks.sft import FRAME_MODULES, context_of, data_digests, storage_of, tokenizer_of
from tasks.storage import Storage, open_url, storage_options

STAGE = "rl"
ENTRY = "models.grpo"
MODEL_MODULES = (
    "models.grpo",
    "models.grpo_data",
    "models.grpo_loss",
    "models.rewards",
    "models.answers",
    *FRAME_MODULES,
)
TRAINER_FIELDS = {
    "group_size",
    "temperature",
    "top_k",
    "top_p",
    "max_new_tokens",
    "clip_eps",
    "kl_beta",
    "updates_per_batch",
    "forward_batch",
    "val_every",
    "ckpt_every",
    "seed",
} | PLACEMENT_FIELDS
CURVE_KEYS = ("train/reward", "train/accuracy", "train/kl", "train/loss", "val/reward", "val/accuracy")
MAX_CURVE_ROWS = 300


def check_rewards(cfg: RLConfig) -> None:
    """Unknown reward names and unimportable custom rewards fail before anything runs."""
    from models.rewards import REGISTRY, import_object

    for r in cfg.rewards:
        if r.name in REGISTRY:
            continue
        if ":" not in r.name:
            raise ForjaInputError(
                f"rl.rewards: unknown reward {r.name!r}; choose among {sorted(REGISTRY)} "
                "or give 'package.module:function'"
            )
        try:
            import_object(r.name)
        except ValueError as e:
            raise ForjaInputError(f"rl.rewards: {e}") from None


def _is_stage(url: str) -> bool:
    try:
        with open_url(f"{url.rstrip('/')}/{MANIFEST}"):
            return True
    except FileNotFoundError:
        return False


def _folder_files(url: str) -> list[str]:
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(url, **storage_options(url))
    if not fs.isdir(path):
        raise ForjaInputError(f"{url}: not a folder; rl.rewards' path must be a reward model folder")
    protocol = "" if "://" not in url else url.split("://", 1)[0] + "://"
    return [protocol + p for p in sorted(fs.find(path))]


def reward_sources(cfg: RLConfig) -> tuple[dict[str, Manifest], dict[str, list]]:
    """(stages the rewards read, for the lineage; digests of plain folders they read, for the key)."""
    stages, digests = {}, {}
    for r in cfg.rewards:
        if not r.path:
            continue
        if _is_stage(r.path):
            stages[r.name] = base_manifest(r.path, f"rl.rewards[{r.name}].path")
        else:
            digests[r.name] = data_digests(_folder_files(r.path))
    return stages, digests


def local_reward_path(url: str, stage: Manifest | None, cache: Path) -> str:
    """A local folder with the reward model's files."""
    if stage is not None:
        return str(local_copy(storage_of(stage), stage.stage, stage.key, cache))
    if "://" not in url:
        return url
    from fsspec.core import url_to_fs

    target = cache / "reward-models" / hashlib.sha256(url.encode()).hexdigest()[:16]
    if not (target / ".complete").exists():
        fs, path = url_to_fs(url, **storage_options(url))
        fs.get(path.rstrip("/") + "/", str(target) + "/", recursive=True)
        (target / ".complete").touch()
    return str(target)


def curve_rows(history: list[dict]) -> list[dict]:
    """Step and the headline values of each logged row (at most MAX_CURVE_ROWS training rows)."""
    rows = [
        {"step": int(r["step"]), **{k: r[k] for k in CURVE_KEYS if k in r}}
        for r in history
        if any(k in r for k in CURVE_KEYS)
    ]
    train = [r for r in rows if "train/reward" in r]
    keep = {id(r) for r in train[:: max(1, len(train) // MAX_CURVE_ROWS)]}
    return [r for r in rows if "train/reward" not in r or id(r) in keep]


def rl(
    storage: Storage,
    cfg: RLConfig,
    base: Manifest,
    tokenizer: Manifest | None = None,
    inputs: list[str] | None = None,
) -> Manifest:
    """GRPO on `base` (an sft, dpo or pretrain stage) with the prompts of `cfg.data` (or `inputs`) and the
    toy problems of `cfg.toy`, rewarded by `cfg.rewards`."""
    check_rewards(cfg)
    tokenizer = tokenizer or tokenizer_of(base)
    sources = list(inputs or cfg.data)
    files = rl_data.prompt_files(sources) if sources else []
    reward_stages, reward_digests = reward_sources(cfg)
    keyed = {
        **cfg.model_dump(mode="json", exclude={"launcher", "data", "base", "rewards"}),
        "rewards": [
            {**r.model_dump(mode="json", exclude={"path"}), "files": reward_digests.get(r.name)}
            for r in cfg.rewards
        ],
        "data": data_digests(files),
    }

    def build(out: StageDir) -> dict:
        from models.chat import ChatTemplate

        check_training("rl", cfg)
        cache = cache_root()
        base_dir = local_copy(storage_of(base), base.stage, base.key, cache, "export")
        tokenizer_dir = local_copy(storage_of(tokenizer), tokenizer.stage, tokenizer.key, cache, "hf")
        template = ChatTemplate.from_file(tokenizer_dir)
        context = context_of(base_dir)
        rewards = []
        for r in cfg.rewards:
            entry = {"name": r.name, "weight": r.weight, **r.options}
            if r.path:
                entry["path"] = local_reward_path(r.path, reward_stages.get(r.name), cache)
            rewards.append(entry)
        data: dict = {}

        def spec(run_dir: Path) -> dict:
            data.update(rl_data.prepare_prompts(files, cfg, template, context, run_dir / "data"))
            return {
                "out_dir": str(run_dir),
                "base": str(base_dir),
                "data_dir": str(run_dir / "data"),
                "tokenizer_dir": str(tokenizer_dir),
                "lora": cfg.lora.model_dump(),
                "optim": cfg.optim,
                "micro_batch": cfg.prompts_per_step,
                "max_steps": cfg.steps,
                "rewards": rewards,
                **cfg.model_dump(include=TRAINER_FIELDS),
            }

        run_dir = run_training(storage, out, ENTRY, spec, cfg.launcher, cfg.num_nodes, cfg.devices)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        history = metrics.pop("history")
        samples = json.loads((run_dir / "samples.json").read_text())
        return {
            **{k: v for k, v in metrics.items() if not k.startswith("val_loss")},
            "data": data,
            "rewards": [{"name": r.name, "weight": r.weight} for r in cfg.rewards],
            "curve": curve_rows(history),
            "evaluations": [r for r in history if "val/reward" in r],
            "samples": samples[-1]["samples"] if samples else [],
            "samples_before": samples[0]["samples"] if len(samples) > 1 else [],
            "base": base.url,
            "base_stage": base.stage,
            "adapter": out.url("adapter"),
            "export": out.url("export"),
            "curves": out.url("curves.png"),
        }

    version = code_version(sys.modules[__name__], rl_data, *MODEL_MODULES)
    lineage = {
        base.stage: base,
        "tokenizer": tokenizer,
        **{f"reward:{n}": m for n, m in reward_stages.items()},
    }
    return run_stage(storage, STAGE, keyed, lineage, version, build)

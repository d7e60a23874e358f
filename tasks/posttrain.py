"""What the post-training stages (SFT, DPO, the reward model, GRPO) share.

Each one tunes a LoRA adapter on a finished stage's merged export with that stage's tokenizer, writes a
spec for its training process (models.posttrain.PostTrainSpec and its subclasses) and reports the finished
run the same way. The stage modules add what is their own: the data they prepare and the spec fields of
their loss.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.errors import ForjaInputError
from tasks.launcher import local_copy
from tasks.manifest import MANIFEST, Manifest, StageDir, read_manifest
from tasks.storage import Storage, open_url, storage_options

# Every post-training stage's code version covers these modules
FRAME_MODULES = (
    "tasks.posttrain",
    "models.posttrain",
    "models.chat",
    "models.lora",
    "models.policy",
    "models.load",
    "models.export",
    "models.model",
    "models.data",
    "models.lightning",
    "models.train",
)


def storage_of(manifest: Manifest) -> Storage:
    """The storage root a manifest lives in (its url is `<root>/<stage>/<key>`)."""
    return Storage(manifest.url.rsplit("/", 2)[0])


def manifest_at(url: str, setting: str) -> Manifest:
    """The manifest of a finished stage folder given by URL or path (or of its manifest.json); `setting`
    names the recipe key the folder came from, for the error."""
    url = url.rstrip("/").removesuffix("/" + MANIFEST)
    try:
        with open_url(f"{url}/{MANIFEST}") as f:
            return Manifest.model_validate_json(f.read())
    except FileNotFoundError:
        raise ForjaInputError(
            f"{url}: no {MANIFEST}; {setting} must be a finished stage folder such as "
            "forja-store/sft/<key> or forja-store/pretrain/<key>"
        ) from None


def is_stage(url: str) -> bool:
    """Whether a folder URL is a finished stage (it has a manifest)."""
    try:
        with open_url(f"{url.rstrip('/')}/{MANIFEST}"):
            return True
    except FileNotFoundError:
        return False


def tokenizer_of(base: Manifest) -> Manifest:
    """The tokenizer stage a base model was trained with (its lineage)."""
    ref = base.inputs.get("tokenizer")
    found = read_manifest(Storage(ref.url.rsplit("/", 2)[0]), ref.stage, ref.key) if ref else None
    if found is None:
        raise ForjaInputError(f"{base.url}: its tokenizer stage is missing from its lineage or storage")
    return found


def data_digests(files: list[str]) -> list[dict]:
    """Name, size and sha256 of each data file, in order: the data's part of the stage key."""
    out = []
    for url in files:
        h, size = hashlib.sha256(), 0
        with open_url(url) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        out.append({"name": url.rstrip("/").rsplit("/", 1)[-1], "bytes": size, "sha256": h.hexdigest()})
    return out


def folder_files(url: str, setting: str, expected: str) -> list[str]:
    """The files below a folder URL, sorted (for their digests); `setting` names the recipe key and
    `expected` what its folder holds, for the error."""
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(url, **storage_options(url))
    if not fs.isdir(path):
        raise ForjaInputError(f"{setting} {url}: not a folder; give {expected}")
    protocol = url.split("://", 1)[0] + "://" if "://" in url else ""
    return [protocol + p for p in sorted(fs.find(path))]


def local_folder(url: str, cache: Path) -> Path:
    """A local path for a folder URL: itself when local, else a copy in the cache named by the URL."""
    if "://" not in url:
        return Path(url)
    from fsspec.core import url_to_fs

    target = cache / "folders" / hashlib.sha256(url.encode()).hexdigest()[:16]
    if not (target / ".complete").exists():
        fs, path = url_to_fs(url, **storage_options(url))
        fs.get(path.rstrip("/") + "/", str(target) + "/", recursive=True)
        (target / ".complete").touch()
    return target


def check_training(section: str, cfg: Any) -> None:
    """Reject optimizer and adapter settings the trainer would refuse, before anything runs (the message
    names the key)."""
    from models.lightning import OptimConfig
    from models.lora import LoraSettings

    try:
        OptimConfig(**cfg.optim)
    except TypeError as e:
        raise ForjaInputError(f"{section}.optim: {e}") from None
    try:
        LoraSettings(**cfg.lora.model_dump())
    except ValueError as e:
        raise ForjaInputError(f"{section}.{e}") from None


@dataclass(frozen=True)
class LocalModels:
    """The base's merged export and the tokenizer's transformers files, in the local cache."""

    base_dir: Path
    tokenizer_dir: Path

    @property
    def context(self) -> int:
        config = json.loads((self.base_dir / "config.json").read_text())
        return int(config.get("n_positions") or config["max_position_embeddings"])

    def template(self):
        from models.chat import ChatTemplate

        return ChatTemplate.from_file(self.tokenizer_dir)


def local_models(base: Manifest, tokenizer: Manifest, cache: Path) -> LocalModels:
    return LocalModels(
        local_copy(storage_of(base), base.stage, base.key, cache, "export"),
        local_copy(storage_of(tokenizer), tokenizer.stage, tokenizer.key, cache, "hf"),
    )


def policy_spec(run_dir: Path, models: LocalModels, cfg: Any, trainer_fields: set[str], **extra) -> dict:
    """The training process's spec: what every post-training run reads, then the stage's own fields."""
    return {
        "out_dir": str(run_dir),
        "base": str(models.base_dir),
        "data_dir": str(run_dir / "data"),
        "tokenizer_dir": str(models.tokenizer_dir),
        "lora": cfg.lora.model_dump(),
        "optim": cfg.optim,
        **cfg.model_dump(include=trainer_fields),
        **extra,
    }


def run_report(run_dir: Path, out: StageDir, base: Manifest, evaluated: str) -> tuple[dict, list[dict]]:
    """(the stats every post-training stage reports, the run's logged history). `evaluated`: the metric
    that marks a row of the history as an evaluation."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = metrics.pop("history")
    samples = json.loads((run_dir / "samples.json").read_text())
    return {
        **metrics,
        "evaluations": [r for r in history if evaluated in r],
        "samples": samples[-1]["samples"] if samples else {},
        "samples_before": samples[0]["samples"] if len(samples) > 1 else {},
        "base": base.url,
        "base_stage": base.stage,
        "adapter": out.url("adapter"),
        "export": out.url("export"),
    }, history

"""What "the model to evaluate" can be, turned into local files and a key.

- a stage manifest (pretrain today; fine-tuning stages the same way): its exported model, `stats.export`
  or `<stage folder>/export`; the key is the stage's own key;
- a stage folder or its `manifest.json`, local or remote (`s3://...`);
- any `transformers` model folder (config.json + weights + tokenizer); the key hashes its files;
- a training checkpoint (`.ckpt` of `models.train`), read with the tokenizer of its run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import fsspec
from fsspec.core import url_to_fs

from tasks.errors import ForjaInputError
from tasks.manifest import MANIFEST, Manifest
from tasks.storage import storage_options

WHAT_TO_PASS = (
    "pass a model folder (config.json, weights and tokenizer files, e.g. <storage>/pretrain/<key>/export), "
    "a stage folder or its manifest.json, or a training checkpoint (.ckpt)"
)


@dataclass(frozen=True)
class ModelSource:
    kind: Literal["folder", "checkpoint"]
    path: Path  # local: a transformers folder, or a .ckpt file
    tokenizer: Path | None  # local folder with tokenizer.model (what Forja's backend reads)
    ref: Manifest  # the stage that made it, or a stand-in keyed by the files' content
    forja: bool  # made by a Forja stage: Forja's Decoder is the natural backend


def cache_root() -> Path:
    return Path(os.environ.get("FORJA_CACHE", Path.home() / ".cache" / "forja"))


def _is_url(s: str) -> bool:
    return "://" in s and not s.startswith("file://")


def _stand_in(stage: str, key: str, url: str) -> Manifest:
    return Manifest(stage=stage, key=key, url=url, config={}, code_version="", created_at=datetime.now(UTC))


def files_key(folder: Path) -> str:
    """A content key for a model folder: paths and sha256 of every file (hidden ones aside)."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    for p in files:
        h.update(str(p.relative_to(folder)).encode() + b"\0" + _file_sha(p).encode() + b"\n")
    return h.hexdigest()[:16]


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, target: Path) -> Path:
    """A local copy of a remote folder, reused once complete."""
    if not (target / ".complete").exists():
        fs, path = url_to_fs(url, **storage_options(url))
        fs.get(path.rstrip("/") + "/", str(target) + "/", recursive=True)
        (target / ".complete").touch()
    return target


def from_manifest(m: Manifest) -> ModelSource:
    url = m.stats.get("export") or f"{m.url}/export"
    if _is_url(url):
        fs, path = url_to_fs(url, **storage_options(url))
        if not fs.exists(f"{path}/config.json"):
            raise ForjaInputError(
                f"{m.stage} {m.key}: no exported model at {url} (no config.json); {WHAT_TO_PASS}"
            )
        local = _fetch(url, cache_root() / m.stage / m.key / "export")
    else:
        local = Path(url.removeprefix("file://"))
        if not (local / "config.json").is_file():
            raise ForjaInputError(
                f"{m.stage} {m.key}: no exported model at {local} (no config.json); {WHAT_TO_PASS}"
            )
    return ModelSource("folder", local, local, m, forja=True)


def _read_manifest(url: str) -> Manifest:
    try:
        with fsspec.open(url, "rb", **storage_options(url)) as f:
            return Manifest.model_validate_json(f.read())
    except FileNotFoundError:
        raise ForjaInputError(f"{url} not found; {WHAT_TO_PASS}") from None
    except ValueError as e:
        raise ForjaInputError(
            f"{url}: not a Forja manifest ({e.__class__.__name__}); {WHAT_TO_PASS}"
        ) from None


def _checkpoint_tokenizer(ckpt: Path) -> Path | None:
    """The tokenizer of the run a checkpoint belongs to: its export, or the spec's tokenizer folder."""
    run = ckpt.parent.parent
    if (run / "export" / "tokenizer.model").is_file():
        return run / "export"
    if (run / "spec.json").is_file():
        folder = json.loads((run / "spec.json").read_text()).get("tokenizer_dir")
        if folder and (Path(folder) / "tokenizer.model").is_file():
            return Path(folder)
    return None


def resolve(model: Manifest | str | os.PathLike) -> ModelSource:
    """The local files and key of a model reference (see the module's docstring)."""
    if isinstance(model, Manifest):
        return from_manifest(model)
    ref = str(model)
    if _is_url(ref):
        fs, path = url_to_fs(ref, **storage_options(ref))
        if ref.endswith(MANIFEST):
            return from_manifest(_read_manifest(ref))
        if fs.exists(f"{path}/{MANIFEST}"):
            return from_manifest(_read_manifest(f"{ref.rstrip('/')}/{MANIFEST}"))
        if not fs.exists(f"{path}/config.json"):
            raise ForjaInputError(f"{ref}: no config.json or {MANIFEST} there; {WHAT_TO_PASS}")
        # a plain folder can change: its local copy is named by the URL and the files' sizes and versions
        listing = sorted(
            (i["name"], i.get("size"), str(i.get("ETag") or i.get("LastModified") or i.get("mtime")))
            for i in fs.find(path, detail=True).values()
        )
        local = _fetch(
            ref, cache_root() / "models" / hashlib.sha256(repr((ref, listing)).encode()).hexdigest()[:16]
        )
        return ModelSource("folder", local, local, _stand_in("model", files_key(local), ref), forja=False)

    path = Path(ref.removeprefix("file://")).expanduser()
    kind = local_kind(path)
    if kind == "manifest":
        return from_manifest(_read_manifest(str(path)))
    if kind == "stage":
        return from_manifest(_read_manifest(str(path / MANIFEST)))
    if kind == "checkpoint":
        ckpt_ref = _stand_in("checkpoint", _file_sha(path)[:16], str(path.resolve()))
        return ModelSource("checkpoint", path, _checkpoint_tokenizer(path), ckpt_ref, forja=True)
    folder = path.resolve()
    tokenizer = folder if (folder / "tokenizer.model").is_file() else None
    return ModelSource("folder", folder, tokenizer, _stand_in("model", files_key(folder), str(folder)), False)


def local_kind(path: Path) -> Literal["manifest", "stage", "checkpoint", "folder"]:
    """What a local path holds, checked without reading any weights; ForjaInputError if not a model."""
    if not path.exists():
        raise ForjaInputError(f"model {path} not found; {WHAT_TO_PASS}")
    if path.is_file() and path.name == MANIFEST:
        return "manifest"
    if path.is_file() and path.suffix == ".ckpt":
        return "checkpoint"
    if path.is_dir() and (path / MANIFEST).is_file():
        return "stage"
    if path.is_dir() and (path / "config.json").is_file():
        return "folder"
    raise ForjaInputError(f"model {path}: no config.json, {MANIFEST} or .ckpt there; {WHAT_TO_PASS}")


def check(model: Manifest | str | os.PathLike) -> None:
    """Fail at once on a local reference that cannot be a model (remote ones are checked on use)."""
    if not isinstance(model, Manifest) and not _is_url(str(model)):
        local_kind(Path(str(model).removeprefix("file://")).expanduser())


def choose_backend(requested: str, source: ModelSource) -> str:
    """auto: Forja's Decoder for what a Forja stage made, transformers for any other folder."""
    if requested == "auto":
        return "forja" if source.forja else "transformers"
    if requested == "transformers" and source.kind == "checkpoint":
        raise ForjaInputError(
            f"{source.path}: a training checkpoint loads with Forja's own model only; "
            "use --set eval.backend=forja (or auto), or evaluate the run's export/ folder"
        )
    return requested

"""Reading the benchmark files: local or remote, plain or compressed, named relative to the project.

A relative path is looked up in the working directory first, then in the project folder, so
`data/eval/...` in a recipe works from anywhere. `.bz2`, `.gz` and `.xz` files are read through.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import fsspec

from tasks.errors import ForjaInputError
from tasks.storage import storage_options

PROJECT = Path(__file__).resolve().parents[2]


def resolve(path: str, what: str) -> str:
    """The path to read (a URL is kept as is); ForjaInputError naming `what` if it does not exist."""
    if "://" in path:
        return path
    for candidate in (Path(path), PROJECT / path):
        if candidate.exists():
            return str(candidate.resolve())
    raise ForjaInputError(
        f"{what}: {path} not found; point eval.{what} at the file (paths are relative "
        f"to the working directory or to {PROJECT})"
    )


def read_text(path: str) -> str:
    """The whole file as text (UTF-8), decompressed by its extension."""
    with fsspec.open(path, "rb", compression="infer", **storage_options(path)) as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ForjaInputError(f"{path}: not UTF-8 text (byte {e.start}); convert it to UTF-8") from None


def digest(path: str) -> str:
    """sha256 of the stored bytes: benchmark data is part of what an evaluation's key depends on."""
    h = hashlib.sha256()
    with fsspec.open(path, "rb", **storage_options(path)) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()

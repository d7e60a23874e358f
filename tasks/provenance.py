"""Which code built an artifact: the git commit of the checkout, or the package version and a hash of its
source where there is no git (an installed package, a container image without `.git`)."""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "models")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip()


def source_hash(root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> str:
    """sha256 over the Python sources of the packages, in path order (12 hex digits)."""
    h = hashlib.sha256()
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


@functools.cache
def code_commit() -> str:
    """`git:<sha>` (with `-dirty` when tracked files differ from it), else `forja-<version>+src.<hash>`.

    Images have no `.git`: they are built with `--build-arg GIT_COMMIT=$(git rev-parse HEAD)`, which
    infra/Dockerfile stores in FORJA_CODE_COMMIT."""
    if baked := os.environ.get("FORJA_CODE_COMMIT"):
        return f"git:{baked}"
    found = (_git("rev-parse", "--show-toplevel", "HEAD") or "").splitlines()
    # only the checkout the code lives in (an installed copy may sit inside some other repository)
    sha = found[1] if len(found) == 2 and Path(found[0]).resolve() == REPO else None
    if sha:
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        return f"git:{sha}" + ("-dirty" if dirty else "")
    try:
        version = metadata.version("forja")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"forja-{version}+src.{source_hash()}"

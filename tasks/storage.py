"""One storage root, an fsspec URL: a local folder or `s3://bucket/prefix` (through s3fs).

Every stage writes under `<root>/<stage>/<key>/`. Nothing here assumes a local filesystem; S3-compatible
servers other than AWS are reached by setting `AWS_ENDPOINT_URL` (read by botocore).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from functools import cached_property

import fsspec
from fsspec.core import url_to_fs


def storage_options(url: str) -> dict:
    """fsspec options for a URL: S3-compatible endpoints come from `AWS_ENDPOINT_URL`."""
    if url.startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL"):
        return {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}
    return {}


@dataclass(frozen=True)
class Storage:
    """A root URL plus the filesystem that serves it."""

    root: str

    def __post_init__(self):
        if "{{" in self.root:  # a deployment made without FORJA_STORAGE in the environment
            from tasks.errors import ForjaInputError

            raise ForjaInputError(
                f"storage root {self.root!r} is an unresolved template: export FORJA_STORAGE (a folder or "
                "s3://bucket/prefix) before `prefect deploy`, or type the storage root in the run parameters"
            )
        root = self.root.rstrip("/")
        if "://" not in root:
            root = os.path.abspath(os.path.expanduser(root))
        object.__setattr__(self, "root", root)

    @cached_property
    def fs(self) -> fsspec.AbstractFileSystem:
        fs, _ = url_to_fs(self.root, **storage_options(self.root))
        return fs

    @property
    def is_local(self) -> bool:
        return "://" not in self.root or self.root.startswith("file://")

    def url(self, *parts: str) -> str:
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def path(self, *parts: str) -> str:
        """The filesystem's own path (no protocol), for calls on `self.fs`."""
        return self.fs._strip_protocol(self.url(*parts))

    def datafolder(self, *parts: str):
        """The same location as a datatrove DataFolder (sharing our filesystem object)."""
        from datatrove.io import DataFolder

        return DataFolder(self.path(*parts), fs=self.fs, auto_mkdir=True)

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def read_text(self, *parts: str) -> str:
        with self.fs.open(self.path(*parts), "rb") as f:
            return f.read().decode("utf-8")

    def write_bytes_atomic(self, data: bytes, *parts: str) -> None:
        """Readers see the old file or the whole new one, never a prefix.

        Object stores make a PUT atomic already; on a local disk we write a sibling and rename.
        """
        target = self.path(*parts)
        parent = target.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if not self.is_local:
            self.fs.pipe_file(target, data)
            return
        tmp = f"{target}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)

    def write_json_atomic(self, obj, *parts: str) -> None:
        self.write_bytes_atomic(json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8"), *parts)

    def list_files(self, *parts: str) -> list[str]:
        """Files under a folder, relative to it, sorted; [] if the folder does not exist."""
        base = self.path(*parts)
        if not self.fs.exists(base):
            return []
        found = self.fs.find(base)
        # leave out what a killed write_bytes_atomic left behind (`<name>.tmp-<hex>`)
        return sorted(p[len(base) + 1 :] for p in found if ".tmp-" not in p.rsplit("/", 1)[-1])

    def digest(self, *parts: str) -> tuple[int, str]:
        """(size in bytes, sha256 hex) of a stored file."""
        h = hashlib.sha256()
        size = 0
        with self.fs.open(self.path(*parts), "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        return size, h.hexdigest()

    def remove(self, *parts: str) -> None:
        target = self.path(*parts)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)


def open_url(url: str, mode: str = "rb"):
    """Open any fsspec URL (local path, s3://, ...) with Forja's storage options."""
    return fsspec.open(url, mode, **storage_options(url))


def input_files(inputs: list[str], extensions: tuple[str, ...], kind: str) -> list[str]:
    """Files behind `inputs` (local paths or URLs): files as given, folders and prefixes searched for files
    ending in `extensions`, sorted. `kind` names the files in errors ("chat data", "RL prompts")."""
    from tasks.errors import ForjaInputError

    files: list[str] = []
    for item in inputs:
        fs, path = url_to_fs(item, **storage_options(item))
        protocol = "" if "://" not in item else item.split("://", 1)[0] + "://"
        if not fs.exists(path):
            raise ForjaInputError(f"{item} does not exist; pass {kind} files or folders with --input")
        if fs.isdir(path):
            found = sorted(p for p in fs.find(path) if p.endswith(extensions))
            if not found:
                raise ForjaInputError(f"{item}: no {', '.join(extensions)} files in this folder")
            files += [protocol + p for p in found]
        elif item.endswith(extensions):
            files.append(item)
        else:
            raise ForjaInputError(f"{item}: unsupported file type for {kind}; use {', '.join(extensions)}")
    return files

"""Input sources of the corpus: local or remote files and folders, WARC/WET, URL lists.

Each source yields datatrove Documents with a stable id and `metadata.source`/`path` (and `url` for web
pages). Unreadable input never crashes a library call deep inside: it becomes a `Problem` (file, record,
reason, fix) that the collect stage counts and records, or a `ForjaInputError` when asked to fail fast.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from urllib.parse import urlparse

import xxhash
from datatrove.data import Document
from fsspec.core import url_to_fs

from tasks.errors import ForjaInputError
from tasks.storage import open_url, storage_options

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz")
WARC_SUFFIXES = (".warc", ".warc.gz", ".arc", ".arc.gz")
WET_SUFFIXES = (".warc.wet.gz", ".wet.gz", ".wet")
URL_LIST_SUFFIXES = (".urls",)

# Magic numbers of common binary formats that end up in text folders by mistake.
_MAGIC = {
    b"\x89PNG": "PNG image",
    b"%PDF": "PDF",
    b"PK\x03\x04": "ZIP archive",
    b"\xff\xd8\xff": "JPEG image",
    b"GIF8": "GIF image",
    b"\x7fELF": "executable",
}


@dataclass(frozen=True)
class Source:
    url: str  # what to open: a local path, s3://..., or an http(s) URL for kind "url"
    rel: str  # path relative to the input it was found under: the stem of document ids
    kind: str  # text | jsonl | parquet | warc | wet | urls | url
    fingerprint: str  # changes when the content does (size + mtime/etag), for cache keys and refreshes


@dataclass(frozen=True)
class Problem:
    source: str
    reason: str
    record: str | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def kind_of(name: str) -> str | None:
    low = name.lower()
    for kind, suffixes in (
        ("wet", WET_SUFFIXES),
        ("warc", WARC_SUFFIXES),
        ("jsonl", JSONL_SUFFIXES),
        ("text", TEXT_SUFFIXES),
        ("urls", URL_LIST_SUFFIXES),
        ("parquet", (".parquet",)),
    ):
        if low.endswith(suffixes):
            return kind
    return None


def _fingerprint(fs, path: str, info: dict) -> str:
    """Local files by content (a copy or a `touch` is the same input); object stores by ETag."""
    for k in ("ETag", "etag"):
        if k in info:
            return f"{info.get('size')}:{str(info[k]).strip(chr(34))}"
    h = xxhash.xxh3_128()
    with fs.open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return f"{info.get('size')}:{h.hexdigest()}"


def _brief(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:240]}"


def expand_inputs(inputs: list[str]) -> tuple[list[Source], list[Problem]]:
    """Turn files, folders, s3:// prefixes and http(s) URLs into a sorted list of sources.

    A missing input is a configuration error (nothing would be collected from it); files of an unknown
    type inside a folder are reported and skipped.
    """
    sources: list[Source] = []
    problems: list[Problem] = []
    for item in inputs:
        scheme = urlparse(item).scheme
        if scheme in ("http", "https"):
            sources.append(Source(url=item, rel=item, kind="url", fingerprint=item))
            continue
        fs, root = url_to_fs(item, **storage_options(item))
        if not fs.exists(root):
            raise ForjaInputError(f"input {item} does not exist; check the path or pass another --input")
        proto = "" if scheme in ("", "file") else f"{scheme}://"
        if fs.isdir(root):
            found = fs.find(root, detail=True)
            entries = [(path, info, path[len(root.rstrip("/")) + 1 :]) for path, info in found.items()]
        else:
            entries = [(root, fs.info(root), root.rsplit("/", 1)[-1])]
        for path, info, rel in sorted(entries):
            if info.get("type") == "directory" or rel.rsplit("/", 1)[-1].startswith("."):
                continue
            kind = kind_of(rel)
            if kind is None:
                problems.append(
                    Problem(
                        f"{proto}{path}",
                        "unsupported file type; collected types: "
                        ".txt .md .jsonl(.gz) .parquet .warc(.gz) .wet(.gz) .urls",
                    )
                )
                continue
            sources.append(
                Source(url=f"{proto}{path}", rel=rel, kind=kind, fingerprint=_fingerprint(fs, path, info))
            )
    return sources, problems


# --- readers -------------------------------------------------------------------------------------------

Report = Callable[[Problem], None]


def _binary_kind(head: bytes) -> str | None:
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            return what
    return "binary data" if b"\x00" in head[:4096] else None


def _read_all(src: Source) -> bytes:
    with open_url(src.url) as f:
        return f.read()


def _decode_utf8(data: bytes, src: Source, report: Report) -> str | None:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        report(
            Problem(
                src.url,
                f"invalid UTF-8 at byte {e.start}; re-encode the file as UTF-8 "
                "(e.g. iconv -f latin1 -t utf-8)",
            )
        )
        return None


def read_text_file(src: Source, report: Report) -> Iterator[Document]:
    data = _read_all(src)
    if not data.strip():
        report(Problem(src.url, "empty file"))
        return
    if what := _binary_kind(data[:8192]):
        report(Problem(src.url, f"{what}, not text; remove it from the input"))
        return
    text = _decode_utf8(data, src, report)
    if text is not None:
        yield Document(text=text, id=src.rel, metadata={"source": "file", "path": src.rel})


def _open_lines(src: Source) -> io.TextIOBase:
    raw = open_url(src.url).open()
    stream = gzip.GzipFile(fileobj=raw) if src.url.endswith(".gz") else raw
    return io.TextIOWrapper(stream, encoding="utf-8", errors="strict", newline="\n")


def _record_doc(rec: object, src: Source, where: str, report: Report) -> Document | None:
    if not isinstance(rec, dict):
        report(Problem(src.url, "record is not a JSON object", where))
        return None
    text = rec.get("text")
    if not isinstance(text, str) or not text.strip():
        report(Problem(src.url, "no non-empty 'text' field", where))
        return None
    metadata = rec.get("metadata") if isinstance(rec.get("metadata"), dict) else {}
    extra = {k: v for k, v in rec.items() if k not in ("id", "text", "metadata")}
    doc_id = str(rec["id"]) if rec.get("id") not in (None, "") else f"{src.rel}#{where}"
    return Document(text=text, id=doc_id, metadata={**extra, **metadata, "source": "jsonl", "path": src.rel})


def read_jsonl(src: Source, report: Report) -> Iterator[Document]:
    n = 0
    line_no = 0
    try:
        with _open_lines(src) as lines:
            for line_no, line in enumerate(lines, start=1):  # noqa: B007 - used after the loop
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    report(
                        Problem(
                            src.url,
                            f"invalid JSON ({e.msg} at column {e.colno}); fix or delete the line",
                            f"line {line_no}",
                        )
                    )
                    continue
                if (doc := _record_doc(rec, src, f"line {line_no}", report)) is not None:
                    n += 1
                    yield doc
    except UnicodeDecodeError as e:
        report(
            Problem(
                src.url, f"invalid UTF-8 ({e.reason}); re-encode the file as UTF-8", f"line {line_no + 1}"
            )
        )
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        report(
            Problem(
                src.url,
                f"truncated or corrupt gzip after {n} records ({_brief(e)}); re-download it",
                f"line {line_no + 1}",
            )
        )
    if line_no == 0:
        report(Problem(src.url, "empty file"))


def read_parquet(src: Source, report: Report) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        with open_url(src.url) as f:
            table = pq.read_table(f)
    except Exception as e:  # pyarrow raises many types for a bad file; all mean the same to the user
        report(Problem(src.url, f"not a readable Parquet file ({_brief(e)})"))
        return
    if "text" not in table.column_names:
        report(Problem(src.url, f"no 'text' column (columns: {', '.join(table.column_names)})"))
        return
    for i, rec in enumerate(table.to_pylist()):
        if (doc := _record_doc(rec, src, f"row {i}", report)) is not None:
            doc.metadata["source"] = "parquet"
            yield doc


def _warc_records(src: Source, report: Report, wanted: set[str]) -> Iterator[tuple[dict, bytes]]:
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    n = 0
    try:
        with open_url(src.url) as f:
            for record in ArchiveIterator(f, arc2warc=True):
                if record.rec_type not in wanted:
                    continue
                headers = dict(record.rec_headers.headers)
                ctype = record.http_headers.get_header("Content-Type") if record.http_headers else None
                body = record.content_stream().read()
                if getattr(record.raw_stream, "limit", 0) > 0:  # fewer bytes than its Content-Length
                    uri = headers.get("WARC-Target-URI", "?")
                    report(
                        Problem(
                            src.url,
                            f"truncated WARC: record of {uri} ends early; re-download the file",
                            f"record {n + 1}",
                        )
                    )
                    return
                n += 1
                yield {**headers, "_content_type": ctype or headers.get("Content-Type", "")}, body
    except (ArchiveLoadFailed, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as e:
        report(Problem(src.url, f"truncated or malformed WARC after {n} records ({_brief(e)})"))


def _charset(content_type: str) -> str:
    for part in content_type.split(";"):
        k, _, v = part.strip().partition("=")
        if k.lower() == "charset" and v:
            return v.strip('"').lower()
    return "utf-8"


def read_warc(src: Source, report: Report) -> Iterator[Document]:
    """HTML responses of a WARC; their text is extracted by the collect step (trafilatura)."""
    for headers, body in _warc_records(src, report, {"response", "resource"}):
        ctype = headers["_content_type"].lower()
        if "html" not in ctype:
            continue
        try:
            html = body.decode(_charset(ctype), errors="replace")
        except LookupError:
            html = body.decode("utf-8", errors="replace")
        url = headers.get("WARC-Target-URI", "")
        yield Document(
            text=html,
            id=f"{src.rel}#{headers.get('WARC-Record-ID', '').strip('<>')}",
            metadata={
                "source": "warc",
                "path": src.rel,
                "url": url,
                "format": "html",
                "date": headers.get("WARC-Date"),
            },
        )


def read_wet(src: Source, report: Report) -> Iterator[Document]:
    """Common Crawl's already extracted text (`conversion` records)."""
    for headers, body in _warc_records(src, report, {"conversion"}):
        text = body.decode("utf-8", errors="replace")
        if text.strip():
            yield Document(
                text=text,
                id=f"{src.rel}#{headers.get('WARC-Record-ID', '').strip('<>')}",
                metadata={
                    "source": "wet",
                    "path": src.rel,
                    "url": headers.get("WARC-Target-URI"),
                    "date": headers.get("WARC-Date"),
                },
            )


READERS: dict[str, Callable[[Source, Report], Iterator[Document]]] = {
    "text": read_text_file,
    "jsonl": read_jsonl,
    "parquet": read_parquet,
    "warc": read_warc,
    "wet": read_wet,
}

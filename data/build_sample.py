"""Regenerate the bundled sample corpus, its ground truth and the malformed-input fixtures.

    python data/build_sample.py [--shared ../shared/data]

Writes data/sample/ (what the corpus flow collects offline), data/sample-truth.json (the planted
duplicates, toxic and low-quality documents the later stages should find) and tests/fixtures/bad/.
Everything is derived from the source datasets with fixed seeds, so reruns give the same bytes.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import gzip
import io
import json
import random
import re
import shutil
import struct
import uuid
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.utils.text import TextNormConfig, simplify_text
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

ROOT = Path(__file__).resolve().parents[1]
SAMPLE, TRUTH, BAD = ROOT / "data/sample", ROOT / "data/sample-truth.json", ROOT / "tests/fixtures/bad"
SEED = 1342
N_CHAPTERS = 25
NEAR_RANGE = (0.80, 0.95)  # word-5-gram Jaccard window of a planted near duplicate
LETTERS = r"[^\W\d_]+"
# datatrove's default quality filters, minus Gopher's English stop-word test (it rejects all Spanish).
QUALITY = (
    GopherQualityFilter(min_stop_words=None),
    GopherRepetitionFilter(),
    C4QualityFilter(),
    FineWebQualityFilter(),
)


# ---------------------------------------------------------------- helpers


def write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def shingles(text: str) -> set[str]:
    # Same normalisation and 5-gram shingles as the MinHash dedup stage, so "jaccard" in the truth
    # file is the similarity that stage actually sees.
    toks = simplify_text(text, TextNormConfig()).split()
    return {" ".join(toks[i : i + 5]) for i in range(len(toks) - 4)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b)


def is_good(text: str) -> bool:
    """>= 120 words, >= 6 sentences and kept by the default quality filters.

    Planted duplicates and toxic docs must be clean apart from what they plant, so that a missed
    duplicate or toxic doc is never hidden by a quality filter that happened to drop it first.
    """
    if len(text.split()) < 120 or len(re.findall(r"[.!?][\"”»)]?(?=\s|$)", text)) < 6:
        return False
    verdicts = (f.filter(Document(text=text, id="")) for f in QUALITY)
    return all(v if isinstance(v, bool) else v[0] for v in verdicts)


def unwrap(body: str) -> str:
    # Gutenberg hard-wraps at ~72 columns; line-level filters (C4 terminal punctuation, FineWeb
    # line ratios) would gut such text, so keep one line per paragraph like most web/pretraining text.
    paras = (" ".join(p.split()) for p in re.split(r"\n\s*\n", body))
    return "\n\n".join(p for p in paras if p)


def wordlist(path: Path) -> set[str]:
    # Single-word LDNOOBW entries; multi-word phrases mostly contain a single listed word anyway.
    return {w.strip().lower() for w in path.read_text("utf-8").splitlines() if w.strip() and " " not in w}


def bad_density(text: str, bad: set[str]) -> float:
    words = re.findall(LETTERS, text.lower())
    return sum(w in bad or (w.endswith("s") and w[:-1] in bad) for w in words) / max(len(words), 1)


def doc(id_: str, text: str, lang: str, kind: str) -> dict:
    return {"id": id_, "text": text, "lang": lang, "kind": kind}


# ---------------------------------------------------------------- base corpus


def pride_chapters(src: Path) -> list[dict]:
    text = (src / "corpus/gutenberg-en/pg1342_pride_and_prejudice.txt").read_text("utf-8")
    heads = list(re.finditer(r"^(?:CHAPTER|Chapter) ([IVXLC]+)\.?\]?[ \t]*$", text, re.M))
    docs = []
    for i, (h, nxt) in enumerate(zip(heads, heads[1:], strict=False)):
        if i == N_CHAPTERS:
            break
        body = text[h.end() : nxt.start()]
        body = re.sub(r"\[Illustration(?:[^\[\]]|\[[^\[\]]*\])*\]", "", body)  # captions, plates
        body = re.sub(r"_([^_]+)_", r"\1", body)  # _italics_ markup
        chapter = f"Chapter {h[1]}\n\n{unwrap(body)}"
        docs.append(doc(f"books/en/pride-ch{i + 1:02d}.txt", chapter, "en", "book"))
    return docs


def quijote_chapters(src: Path) -> list[dict]:
    text = (src / "corpus/gutenberg-es/pg2000_don_quijote.txt").read_text("utf-8").lstrip("\ufeff")
    # Keep only the book: drop the Project Gutenberg licence header and footer.
    text = text.split("*** START OF THE PROJECT GUTENBERG EBOOK DON QUIJOTE ***")[1]
    text = text.split("*** END OF THE PROJECT GUTENBERG EBOOK DON QUIJOTE ***")[0]
    text = re.sub(r"^(?:Primera|Segunda|Tercera|Cuarta) parte del ingenioso .*$", "", text, flags=re.M)
    heads = list(re.finditer(r"^Capítulo (?:primero|[IVXLC]+)\..*?(?=\n[ \t]*\n)", text, re.M | re.S | re.I))
    docs = []
    for i, (h, nxt) in enumerate(zip(heads, heads[1:], strict=False)):
        if i == N_CHAPTERS:
            break
        title = " ".join(h[0].split())
        body = unwrap(text[h.end() : nxt.start()])
        docs.append(doc(f"books/es/quijote-cap{i + 1:02d}.md", f"# {title}\n\n{body}", "es", "book"))
    return docs


def xquad(src: Path, lang: str) -> list[dict]:
    data = json.loads((src / f"corpus/xquad/xquad.{lang}.json").read_text("utf-8"))["data"]
    paras = [(a["title"], p["context"].lstrip("\ufeff")) for a in data for p in a["paragraphs"]]
    return [
        doc(f"xquad-{lang}-{i:04d}", text, lang, "wiki") | {"title": title.replace("_", " ")}
        for i, (title, text) in enumerate(paras, 1)
    ]


# ---------------------------------------------------------------- planted duplicates


def near_copy(text: str, rng: random.Random) -> tuple[str, float]:
    """Randomly edit words until the 5-gram Jaccard with `text` drops into NEAR_RANGE."""
    base, target = shingles(text), rng.uniform(0.82, 0.93)
    vocab = sorted({w for w in re.findall(LETTERS, text) if len(w) > 2})
    toks = re.findall(r"\S+|\s+", text)
    j, misses = 1.0, 0
    while j > target and misses < 20:
        cand = list(toks)
        i = rng.choice([k for k, t in enumerate(cand) if not t.isspace()])
        op = rng.choice(["sub", "sub", "del", "ins"])
        if op == "sub":  # swap the word but keep its punctuation
            cand[i] = re.sub(LETTERS, rng.choice(vocab), cand[i], count=1)
        elif op == "del" and i + 1 < len(cand) and cand[i + 1] == " ":
            del cand[i : i + 2]
        else:
            cand[i:i] = [rng.choice(vocab).lower(), " "]
        cj = jaccard(base, shingles("".join(cand)))
        if cj < NEAR_RANGE[0]:  # one edit too many for a short text: try a gentler one
            misses += 1
            continue
        toks, j = cand, cj
    out = "".join(toks)
    # Cosmetic edits the normaliser erases (digits -> 0, punctuation dropped) but exact hashing sees.
    out = re.sub(r"\d", lambda m: str((int(m[0]) + 1) % 10), out, count=1)
    out = out.replace(", ", "; ", 1)
    return out, round(jaccard(base, shingles(out)), 4)


def plant(bases: dict[str, list[dict]], rng: random.Random) -> tuple[list, list, list, list]:
    """Pick distinct good base docs (books + wiki, half en, half es); return exact and near copies."""
    picks = {"exact": [], "near": []}
    for lang in ("en", "es"):
        books = rng.sample([d for d in bases[lang] if d["kind"] == "book" and is_good(d["text"])], 8)
        wiki = rng.sample([d for d in bases[lang] if d["kind"] == "wiki" and is_good(d["text"])], 37)
        picks["exact"] += books[:3] + wiki[:12]
        picks["near"] += books[3:] + wiki[12:]
    rng.shuffle(picks["exact"])
    rng.shuffle(picks["near"])
    exact_recs, exact_truth, near_recs, near_truth = [], [], [], []
    # Two exact copies become stand-alone .txt files (one of a jsonl paragraph, one of a .md
    # chapter) so exact duplicates cross input kinds in both directions.
    as_txt = {
        next(d["id"] for d in picks["exact"] if d["kind"] == "wiki"),
        next(d["id"] for d in picks["exact"] if d["id"].endswith(".md")),
    }
    for n, d in enumerate(picks["exact"], 1):
        id_ = f"dup-exact-{n:03d}"
        if d["id"] in as_txt:
            id_ = f"planted/{id_}.txt"
            write(SAMPLE / id_, d["text"])
        else:
            exact_recs.append({"id": id_, "text": d["text"], "metadata": {"lang": d["lang"]}})
        exact_truth.append({"id": id_, "of": d["id"]})
    for n, d in enumerate(picks["near"], 1):
        text, j = near_copy(d["text"], rng)
        assert NEAR_RANGE[0] <= j <= NEAR_RANGE[1], (d["id"], j)
        near_recs.append({"id": f"dup-near-{n:03d}", "text": text, "metadata": {"lang": d["lang"]}})
        near_truth.append({"id": f"dup-near-{n:03d}", "of": d["id"], "jaccard": j})
    return exact_recs, exact_truth, near_recs, near_truth


# ---------------------------------------------------------------- toxic and low-quality docs


def clean_tweet(t: str) -> str:
    t = re.sub(r"\bRT\b|@\w+:?|https?://\S+", " ", t.replace("&amp;", "and"))
    t = re.sub(r"&#?\w+;", " ", t)  # HTML-escaped emoji and quotes
    t = " ".join(t.replace('"', " ").split()).strip(" .,:;!?-'*")
    return t[:1].upper() + t[1:] + "." if t else ""


def clean_fortune(entry: str) -> str:
    lines = [ln.strip().lstrip("-").strip() for ln in entry.splitlines() if not ln.strip().startswith("--")]
    t = " ".join(" ".join(lines).split())
    return t if t.endswith((".", "!", "?", "…")) else t + "."


def as_prose(sentences: list[str], per_line: int) -> str:
    return "\n".join(" ".join(sentences[i : i + per_line]) for i in range(0, len(sentences), per_line))


def pack(items: list[str], min_items: int, max_items: int) -> list[list[str]]:
    """Greedily group items into documents of >= 125 words (min_items..max_items items each)."""
    groups, cur = [], []
    for it in items:
        cur.append(it)
        words = sum(len(x.split()) for x in cur)
        if len(cur) >= max_items or (len(cur) >= min_items and words >= 125):
            groups.append(cur)
            cur = []
    return groups


def toxic_docs(src: Path, rng: random.Random) -> list[dict]:
    bad = {lang: wordlist(src / f"toxicity/ldnoobw/{lang}") for lang in ("en", "es")}
    with open(src / "toxicity/toxicity-davidson-hate-offensive/labeled_data.csv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["class"] in ("0", "1")]  # hate / offensive
    tweets = sorted({clean_tweet(r["tweet"]) for r in rows})
    # Plain sentences only: no hashtag spam or emoji leftovers, each with at least one listed word.
    tweets = [t for t in tweets if t.isascii() and not re.search(r"[#|]", t) and len(t.split()) >= 6]
    tweets = [t for t in tweets if bad_density(t, bad["en"]) > 0]
    entries = []
    for f in sorted((src / "corpus/fortunes-es/off").glob("*.fortunes")):
        text = codecs.decode(f.read_text("utf-8"), "rot13")  # fortune(6) convention for offensive files
        entries += [clean_fortune(e) for e in re.split(r"^%\s*$", text, flags=re.M) if e.strip()]
    entries = [e for e in entries if bad_density(e, bad["es"]) > 0]

    def compose(items: list[str], lang: str, min_items: int, per_line: int, limit: int) -> list[str]:
        # Keep only docs that would survive generic quality filters yet are clearly toxic; reshuffle
        # what is left a few times, since the Spanish pool (~50 matching entries) is small.
        texts = []
        for _ in range(10):
            rng.shuffle(items)
            for group in pack(items, min_items, 20):
                text = as_prose(group, per_line)
                if len(texts) < limit and is_good(text) and bad_density(text, bad[lang]) >= 0.02:
                    texts.append(text)
                    items = [i for i in items if i not in group]
        return texts

    es = compose(entries, "es", 5, 3, 10)
    en = compose(rng.sample(tweets, 400), "en", 12, 5, 20 - len(es))  # English tops the set up to 20
    return [
        {"id": f"toxic-{lang}-{n:02d}", "text": t, "metadata": {"lang": lang}}
        for lang, texts in (("en", en), ("es", es))
        for n, t in enumerate(texts, 1)
    ]


LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
    "et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut "
    "aliquip ex ea commodo consequat. Duis aute irure dolor in reprehenderit in voluptate velit esse cillum "
    "dolore eu fugiat nulla pariatur. Excepteur sint occaecat cupidatat non proident, sunt in culpa qui "
    "officia deserunt mollit anim id est laborum."
)


def lowquality_docs() -> list[dict]:
    nav_en = "Home|About us|Products|Services|Blog|News|Careers|Contact|Login|Sign up|Cart|FAQ|Help"
    nav_es = "Inicio|Noticias|Deportes|Economía|Cultura|Opinión|Vídeos|Fotos|Tiempo|Contacto|Entrar"
    tags = "love instagood photooftheday fashion beautiful happy cute tbt like4like followme selfie art"
    docs = {
        "lowq-nav-links-en": "\n".join(nav_en.split("|") * 3),
        "lowq-nav-links-es": "\n".join(nav_es.split("|") * 3),
        "lowq-repeated-line-en": "\n".join(["Click here to claim your free prize now!"] * 50),
        "lowq-repeated-line-es": "\n".join(["Haz clic aquí y gana un iPhone gratis hoy mismo."] * 50),
        "lowq-lorem-ipsum": "\n\n".join([LOREM] * 4),
        "lowq-hashtags": " ".join(f"#{w}" for w in tags.split() * 5),
    }
    return [{"id": k, "text": v, "metadata": {}} for k, v in docs.items()]


# ---------------------------------------------------------------- web pages (WARC)

SITE = {
    "en": dict(
        name="Example Encyclopedia",
        home="Main page",
        cookie=(
            "We use cookies to improve your experience. By continuing to browse you accept our "
            "<a href='/cookies'>cookie policy</a>."
        ),
        ok="Accept all",
        no="Reject",
        menu="Main page|Contents|Current events|Random article|Donate",
        related="Related articles",
        edited="Last edited on 12 March 2024",
        footer="Text is available under the Creative Commons Attribution-ShareAlike License.",
        links="Privacy policy|About|Disclaimers|Contact us|Terms of use",
        search="Search",
    ),
    "es": dict(
        name="Enciclopedia de Ejemplo",
        home="Portada",
        cookie=(
            "Usamos cookies propias y de terceros para mejorar tu experiencia. Si continúas navegando "
            "aceptas nuestra <a href='/cookies'>política de cookies</a>."
        ),
        ok="Aceptar todas",
        no="Rechazar",
        menu="Portada|Índice|Actualidad|Artículo aleatorio|Donaciones",
        related="Artículos relacionados",
        edited="Última edición: 12 de marzo de 2024",
        footer="El texto está disponible bajo la Licencia Creative Commons Atribución-CompartirIgual.",
        search="Buscar",
        links="Política de privacidad|Acerca de|Aviso legal|Contacto|Condiciones de uso",
    ),
}


def page_html(lang: str, title: str, paras: list[str], related: list[str]) -> str:
    s = SITE[lang]

    def li(items: list[str]) -> str:
        return "".join(f"<li><a href='/wiki/{i.replace(' ', '_')}'>{i}</a></li>" for i in items)

    body = "\n".join(f"<p>{p}</p>" for p in paras)
    return f"""<!DOCTYPE html>
<html lang="{lang}"><head><meta charset="utf-8"><title>{title} - {s["name"]}</title>
<link rel="stylesheet" href="/static/site.css"><script src="/static/analytics.js"></script></head>
<body>
<div id="cookie-banner" class="cookie-consent"><p>{s["cookie"]}</p>
<button>{s["ok"]}</button> <button>{s["no"]}</button></div>
<header class="site-header"><a class="logo" href="/">{s["name"]}</a>
<form action="/search"><input type="search" name="q" placeholder="{s["search"]}"></form></header>
<nav class="main-nav"><ul>{li(s["menu"].split("|"))}</ul></nav>
<main>
<div class="breadcrumbs"><a href="/">{s["home"]}</a> &rsaquo; {title}</div>
<article>
<h1>{title}</h1>
<p class="byline">{s["edited"]}</p>
{body}
</article>
<aside class="related"><h2>{s["related"]}</h2><ul>{li(related)}</ul></aside>
</main>
<footer><p>&copy; 2024 {s["name"]}. {s["footer"]}</p><ul>{li(s["links"].split("|"))}</ul></footer>
<script>window.dataLayer = window.dataLayer || []; dataLayer.push({{"page": "{title}"}});</script>
</body></html>
"""


def write_warc(pages: list[tuple[str, str]]) -> tuple[bytes, list[int]]:
    """WARC/1.0, one gzip member per record; ids and dates derive from the URL so output is stable."""
    buf, offsets = io.BytesIO(), []
    writer = WARCWriter(buf, gzip=True, warc_version="1.0")
    info = b"software: forja data/build_sample.py\r\nformat: WARC File Format 1.0\r\n"
    writer.write_record(
        writer.create_warc_record(
            "",
            "warcinfo",
            payload=io.BytesIO(info),
            warc_content_type="application/warc-fields",
            warc_headers_dict={
                "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'warcinfo')}>",
                "WARC-Date": "2024-03-12T10:00:00Z",
                "WARC-Filename": "pages.warc.gz",
            },
        )
    )
    for n, (url, html) in enumerate(pages):
        offsets.append(buf.tell())
        payload = html.encode()
        http = StatusAndHeaders(
            "200 OK",
            [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(payload)))],
            protocol="HTTP/1.1",
        )
        writer.write_record(
            writer.create_warc_record(
                url,
                "response",
                payload=io.BytesIO(payload),
                http_headers=http,
                warc_headers_dict={
                    "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>",
                    "WARC-Date": f"2024-03-12T10:{n + 1:02d}:00Z",
                },
            )
        )
    offsets.append(buf.tell())
    return buf.getvalue(), offsets


def web_pages(wiki: dict[str, list[dict]], used: set[str], rng: random.Random) -> list[tuple[str, str]]:
    """15 English + 15 Spanish article pages, each built from unplanted paragraphs of one article."""
    titles = sorted({d["title"] for d in wiki["en"]})
    rng.shuffle(titles)
    pages = []
    for lang, chosen in (("en", titles[:24]), ("es", titles[24:])):
        n = 0
        for title in chosen:
            paras = [d["text"] for d in wiki[lang] if d["title"] == title and d["id"] not in used]
            if len(paras) < 3 or n == 15:  # >= 3 paragraphs keeps any one below ~0.5 Jaccard
                continue
            url = f"https://{lang}.example.org/wiki/{title.replace(' ', '_')}"
            pages.append((url, page_html(lang, title, paras[:4], rng.sample(titles, 4))))
            n += 1
    return pages


# ---------------------------------------------------------------- malformed-input fixtures


def tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # Each scanline: filter byte 0, then 16 RGB pixels of a gradient.
    rows = b"".join(b"\x00" + bytes(v for x in range(16) for v in (x * 16, y * 16, 128)) for y in range(16))
    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)  # 16x16, 8-bit RGB
    idat = chunk(b"IDAT", zlib.compress(rows))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def bad_fixtures(wiki_en: list[dict], pages: list[tuple[str, str]]) -> None:
    write(BAD / "empty.txt", b"")
    write(BAD / "binary.txt", tiny_png())
    write(
        BAD / "invalid-utf8.txt",
        b"A plain paragraph of English text that is mostly fine.\n"
        b"Then a stray Latin-1 byte: caf\xe9 au lait, a lone continuation byte \x80 here,\n"
        b"an overlong slash \xc0\xaf, a truncated euro sign \xe2\x82 and an invalid start byte \xff.\n"
        b"The last line is valid UTF-8 again: se\xc3\xb1or, na\xc3\xafve, \xe2\x82\xac5.\n",
    )
    good = [
        {"id": f"bad-jsonl-{i}", "text": f"Record {i} of the broken-line fixture.", "metadata": {}}
        for i in range(1, 6)
    ]
    broken = '{"id": "bad-jsonl-cut", "text": "this line stops mid-\n'
    write(BAD / "broken-line.jsonl", jsonl(good[:3]) + broken + jsonl(good[3:]))
    recs = [
        {"id": f"trunc-jsonl-{i:02d}", "text": d["text"], "metadata": {}}
        for i, d in enumerate(wiki_en[:10], 1)
    ]
    gz = gzip.compress(jsonl(recs).encode(), mtime=0)
    write(BAD / "truncated.jsonl.gz", gz[: len(gz) // 2])
    warc, offsets = write_warc(pages[:3])  # cut half-way through the third response member
    write(BAD / "truncated.warc.gz", warc[: (offsets[2] + offsets[3]) // 2])
    write(
        BAD / "no-text.jsonl",
        jsonl(
            [
                {"id": "no-text-1", "content": "Text under the wrong key."},
                {"id": "no-text-2", "metadata": {"lang": "en"}},
                {"id": "no-text-3", "text": None, "metadata": {}},
            ]
        ),
    )
    write(BAD / "README.md", FIXTURES_README)


FIXTURES_README = """# Malformed-input fixtures

Generated by `data/build_sample.py`; each file exercises one way an input can be broken. The collect
stage should skip what it cannot read, count it, and keep every good document it can recover.

- `empty.txt`: 0-byte text file. Expect no document and no crash.
- `binary.txt`: a 16x16 PNG named `.txt`. Binary content must be rejected, not decoded as text.
- `invalid-utf8.txt`: mostly valid UTF-8 with a few invalid byte sequences (a Latin-1 byte, a lone
  continuation byte, an overlong encoding, a truncated multi-byte sequence, 0xFF).
- `broken-line.jsonl`: five good records (`bad-jsonl-1` .. `bad-jsonl-5`) and, after the third, one
  truncated JSON line. The five good records must survive.
- `truncated.jsonl.gz`: gzip of 10 records (`trunc-jsonl-01` .. `trunc-jsonl-10`) cut half-way through
  the compressed stream. The first 5 records decompress whole, then the stream ends early (Python's
  gzip raises EOFError).
- `truncated.warc.gz`: record-per-member WARC/1.0 (warcinfo + 3 HTML responses) cut half-way through
  the third response. The first two pages are intact; warcio yields the third with its HTML cut short
  and no error, while datatrove's WarcReader (0.10.1) yields no document at all from this file.
- `no-text.jsonl`: records without usable text (text under another key, only metadata, `"text": null`).
"""


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared/data", help="source datasets")
    src = ap.parse_args().shared
    for d in (SAMPLE, BAD):
        shutil.rmtree(d, ignore_errors=True)
    rng = random.Random(SEED)

    books = pride_chapters(src) + quijote_chapters(src)
    wiki = {lang: xquad(src, lang) for lang in ("en", "es")}
    for d in books:  # whole-file docs: the file content is the text, with no trailing newline to strip
        write(SAMPLE / d["id"], d["text"])
    for lang, docs in wiki.items():
        meta = [
            {
                "id": d["id"],
                "text": d["text"],
                "metadata": {"source": "xquad", "lang": lang, "title": d["title"]},
            }
            for d in docs
        ]
        write(SAMPLE / f"wiki/xquad-{lang}.jsonl", jsonl(meta))

    bases = {lang: [b for b in books if b["lang"] == lang] + wiki[lang] for lang in ("en", "es")}
    exact, exact_truth, near, near_truth = plant(bases, rng)
    write(SAMPLE / "planted/exact.jsonl", jsonl(exact))
    write(SAMPLE / "planted/near.jsonl.gz", gzip.compress(jsonl(near[:30]).encode(), mtime=0))
    table = pa.table({"id": [r["id"] for r in near[30:]], "text": [r["text"] for r in near[30:]]})
    pq.write_table(table, SAMPLE / "planted/near.parquet")
    toxic = toxic_docs(src, rng)
    write(SAMPLE / "planted/toxic.jsonl", jsonl(toxic))
    lowq = lowquality_docs()
    write(SAMPLE / "misc/lowquality.jsonl", jsonl(lowq))

    used = {t["of"] for t in exact_truth + near_truth}
    pages = web_pages(wiki, used, rng)
    write(SAMPLE / "web/pages.warc.gz", write_warc(pages)[0])
    for name in ("whirlwind.warc.gz", "whirlwind.warc.wet.gz"):
        shutil.copyfile(src / "web/commoncrawl-whirlwind-warc" / name, SAMPLE / "web" / name)
    bad_fixtures(wiki["en"], pages)

    truth = {
        "exact": exact_truth,
        "near": near_truth,
        "toxic": [d["id"] for d in toxic],
        "lowquality": [d["id"] for d in lowq],
        "base_ids_note": BASE_IDS_NOTE,
    }
    write(TRUTH, json.dumps(truth, indent=2, ensure_ascii=False) + "\n")
    print(
        f"books {len(books)}, wiki {sum(map(len, wiki.values()))}, web pages {len(pages)}, "
        f"exact {len(exact_truth)}, near {len(near_truth)}, toxic {len(toxic)}, lowquality {len(lowq)}"
    )


BASE_IDS_NOTE = (
    "Ids are the ones the collect stage gives: a jsonl/jsonl.gz/parquet row keeps its 'id'; a whole-file "
    ".txt/.md document is named by its path relative to data/sample with forward slashes (so the two "
    "exact copies stored as files are 'planted/dup-exact-NNN.txt'); a WARC response is "
    "'<warc path>#<WARC-Record-ID>'. Whole-file texts have no trailing newline, so an exact copy matches "
    "whether or not the reader strips the text. 'jaccard' is the word-5-gram Jaccard after datatrove "
    "simplify_text(TextNormConfig()). Not listed: web/pages.warc.gz reuses other (unplanted) xquad "
    "paragraphs, 3-4 per article page, so a page shares at most ~0.45 Jaccard with any one of them; "
    "web/whirlwind.warc.gz and whirlwind.warc.wet.gz are the same Common Crawl capture (Jaccard ~0.2: "
    "the WET text keeps the menus)."
)


if __name__ == "__main__":
    main()

"""The report card: one markdown page about a pipeline's artifacts, rendered from their manifests.

Pure functions: the caller hands over the manifests (and says how a picture is linked); nothing here reads
storage or talks to Prefect. Generic over the stages present: every stage gets its key numbers, tables and
pictures from its manifest; the corpus and the tokenizer get sections of their own, and every model (a
stage that exported `.safetensors`) gets its lineage: corpus, tokenizer, config and code.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Callable, Iterable
from typing import Any

from tasks.manifest import InputRef, Manifest, canonical_json

# Known stages in pipeline order; stages not listed follow, after their inputs.
ORDER = [
    "collect", "clean", "dedup", "detox", "stats", "tokenizer", "shards",
    "pretrain", "eval", "sft", "prefs", "dpo", "rm", "rl",
]  # fmt: skip
CORPUS_STAGES = {"collect", "clean", "dedup", "detox", "stats"}
SPECIAL = CORPUS_STAGES | {"tokenizer", "shards"}  # rendered by their own sections
# Stats that read as quality or speed measurements (shown side by side in "Key numbers").
METRIC = re.compile(
    r"(^|[/._])(val_)?(loss|bpb|ppl|perplexity|acc|accuracy|score|reward|win_rate|f1|exact_match|pass@\d+"
    r"|bleu|rouge\w*|mfu|tokens_per_s|kl|margin)($|[/._])",
    re.IGNORECASE,
)
MAX_ROWS = 12
MAX_SCALARS = 24

ImageLink = Callable[[Manifest, str], str]  # (manifest, path in its folder) -> what the markdown links to


def ref(m: Manifest | InputRef) -> str:
    return f"{m.stage}/{m.key}"


def lineage(roots: Iterable[Manifest], read: Callable[[InputRef], Manifest | None]) -> dict[str, Manifest]:
    """Every manifest reachable from `roots` through their inputs, by `stage/key`."""
    found: dict[str, Manifest] = {}
    todo = list(roots)
    while todo:
        m = todo.pop()
        if ref(m) in found:
            continue
        found[ref(m)] = m
        for inp in m.inputs.values():
            if ref(inp) not in found and (up := read(inp)) is not None:
                todo.append(up)
    return found


def _rank(stage: str) -> tuple[int, str]:
    return (ORDER.index(stage), "") if stage in ORDER else (len(ORDER), stage)


def ordered(manifests: dict[str, Manifest]) -> list[Manifest]:
    """Inputs before what they feed; among stages ready at the same time, pipeline order."""
    done: list[Manifest] = []
    seen: set[str] = set()
    pending = sorted(manifests.values(), key=lambda m: (_rank(m.stage), m.created_at))
    while pending:
        ready = [
            m for m in pending if all(ref(i) in seen or ref(i) not in manifests for i in m.inputs.values())
        ]
        m = ready[0] if ready else pending[0]  # a cycle cannot happen with content keys; stay total anyway
        done.append(m)
        seen.add(ref(m))
        pending.remove(m)
    return done


def ancestors(m: Manifest, manifests: dict[str, Manifest]) -> list[Manifest]:
    """Everything `m` was built from, nearest first."""
    out: list[Manifest] = []
    todo = [ref(i) for i in m.inputs.values()]
    while todo:
        r = todo.pop(0)
        if r in manifests and manifests[r] not in out:
            out.append(manifests[r])
            todo += [ref(i) for i in manifests[r].inputs.values()]
    return out


def is_model(m: Manifest) -> bool:
    return any(f.path.endswith(".safetensors") and not f.path.startswith("checkpoints/") for f in m.files)


def pictures(m: Manifest) -> list[str]:
    return [f.path for f in m.files if f.path.lower().endswith((".png", ".svg", ".jpg", ".jpeg"))]


def config_digest(m: Manifest) -> str:
    return hashlib.sha256(canonical_json(m.config).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------- formatting


def cell(value: Any) -> str:
    """One table cell: numbers readable, text on one line, pipes escaped."""
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, float):
        text = "nan" if value != value else f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    elif value is None:
        text = "–"
    elif isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, default=str)
    else:
        text = str(value)
    text = text.replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= 120 else text[:117] + "…"


def table(header: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> list[str]:
    numeric = numeric if numeric is not None else set()
    align = ["---:" if i in numeric else "---" for i in range(len(header))]
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(align) + " |",
        *["| " + " | ".join(cell(v) for v in row) + " |" for row in rows],
    ]


def seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def short(key: str) -> str:
    return f"`{key[:8]}`"


def code_of(m: Manifest) -> str:
    """The commit that built it (short sha), else the stage's code hash."""
    c = m.code_commit
    if c and c.startswith("git:"):
        sha, _, dirty = c[4:].partition("-")
        return f"git {sha[:10]}" + (" (uncommitted changes)" if dirty else "")
    return c or "commit not recorded"


def scalars(stats: dict[str, Any], prefix: str = "", depth: int = 3) -> list[tuple[str, Any]]:
    """Numbers, flags and short strings of a stats tree, with dotted names (three levels deep)."""
    out: list[tuple[str, Any]] = []
    for k, v in stats.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and _texts(v):
            continue  # e.g. sample generations: listed on their own
        if isinstance(v, dict) and depth > 1:
            out += scalars(v, name + ".", depth - 1)
        elif isinstance(v, bool | int | float) or v is None or _short_text(v):
            out.append((name, v))
    return out


def _texts(v: dict[str, Any]) -> bool:
    return bool(v) and all(isinstance(x, str) for x in v.values())


def _short_text(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= 80 and "\n" not in v


def record_tables(stats: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Top-level lists of flat records (evaluations, per-shard counts...): each one a table."""
    out = []
    for k, v in stats.items():
        if (
            isinstance(v, list)
            and v
            and all(isinstance(r, dict) for r in v)
            and all(not isinstance(x, dict | list) for r in v for x in r.values())
        ):
            out.append((k, v))
    return out


def metrics(m: Manifest) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in scalars(m.stats) if isinstance(v, int | float) and METRIC.search(k)]


def headline(m: Manifest) -> str:
    """A few words that say what an artifact is."""
    s = m.stats
    if m.stage == "tokenizer" and "vocab_size" in s:
        return f"{s.get('model_type', '')} {s['vocab_size']:,} pieces".strip()
    if isinstance(s.get("documents"), int):
        return f"{s['documents']:,} documents"
    if isinstance(s.get("tokens"), int):
        return f"{s['tokens']:,} tokens"
    found = dict(metrics(m))
    for k in ("val_loss", "loss", "reward", "accuracy", "score"):
        if isinstance(found.get(k), int | float):
            return f"{k} {cell(found[k])}"
    return ""


# ---------------------------------------------------------------------------------------------- sections


def stages_section(ms: list[Manifest]) -> list[str]:
    rows = [
        [
            m.stage,
            short(m.key),
            headline(m),
            seconds(m.seconds),
            m.created_at.strftime("%Y-%m-%d %H:%M UTC"),
            len(m.files),
            human_bytes(sum(f.bytes for f in m.files)),
            code_of(m),
        ]
        for m in ms
    ]
    total = sum(m.seconds for m in ms)
    return [
        "## Stages",
        "",
        f"{len(ms)} artifacts; building them took {seconds(total)} in all (a reused artifact keeps the time "
        "and date of the run that built it).",
        "",
        *table(["stage", "key", "what", "build time", "built", "files", "size", "code"], rows, {3, 5, 6}),
    ]


def _sources(collect: Manifest) -> str:
    sources = [s.split("@", 1)[0] for s in collect.config.get("sources", [])]
    if not sources:
        return "no recorded sources"
    if len(sources) == 1:
        return f"`{sources[0]}`"
    try:
        common = posixpath.commonpath(sources)
    except ValueError:
        common = ""
    return f"{len(sources)} inputs" + (f" under `{common}`" if common else "")


def lineage_section(ms: list[Manifest], by_ref: dict[str, Manifest]) -> list[str]:
    models = [m for m in ms if is_model(m)]
    if not models:
        return []
    lines = [
        "## Lineage",
        "",
        "What each model was made from: keys of the stage folders (`<root>/<stage>/<key>/`).",
    ]
    for m in models:
        ups = ancestors(m, by_ref)
        lines += ["", f"**{m.stage}** {short(m.key)} — {headline(m) or 'model'}", ""]
        corpus = [a for a in ups if a.stage == "stats"]
        for c in corpus:
            collects = [a for a in ancestors(c, by_ref) if a.stage == "collect"]
            src = "; ".join(_sources(a) for a in collects)
            lines.append(f"- corpus: stats {short(c.key)} ({headline(c)}" + (f"; {src})" if src else ")"))
        for t in (a for a in ups if a.stage == "tokenizer"):
            lines.append(f"- tokenizer: {short(t.key)} ({headline(t)})")
        for a in ups:
            if a.stage not in CORPUS_STAGES | {"tokenizer"}:
                lines.append(f"- {a.stage}: {short(a.key)}" + (f" ({headline(a)})" if headline(a) else ""))
        lines.append(f"- config: digest `{config_digest(m)}` — `{cell(m.config)}`")
        lines.append(f"- code: {code_of(m)}; stage code hash `{m.code_version}`")
        if export := m.stats.get("export"):
            lines.append(f"- export: `{export}`")
    return lines


def corpus_section(ms: list[Manifest]) -> list[str]:
    stats = [m for m in ms if m.stage == "stats"]
    if not stats:
        return []
    s = stats[-1].stats
    lines = [
        "## Corpus",
        "",
        f"**{s['documents']:,} documents**, {human_bytes(s['bytes'])} of text, ~{s['tokens_estimate']:,} "
        f"tokens (estimated); at {s['bytes_per_token_assumed']:g} bytes/token that is "
        f"{s['estimated_size']} ({s['reference']}).",
    ]
    if s.get("funnel"):
        rows = [[r["stage"], r["documents_in"], r["documents_out"], r["removed"]] for r in s["funnel"]]
        lines += ["", "Funnel:", "", *table(["stage", "in", "out", "removed"], rows, {1, 2, 3})]
    for clean in (m for m in ms if m.stage == "clean" and m.stats.get("filters")):
        rows = [[name, f.get("removed", 0)] for name, f in clean.stats["filters"].items()]
        lines += ["", "Removed by each cleaning filter:", "", *table(["filter", "removed"], rows, {1})]
    if s.get("languages"):
        rows = [
            [
                lang,
                v["documents"],
                human_bytes(v["bytes"]),
                v["tokens_estimate"],
                f"{100 * v['share_of_tokens']:.1f} %",
            ]
            for lang, v in s["languages"].items()
        ]
        lines += [
            "",
            *table(["language", "documents", "bytes", "tokens (est.)", "share"], rows, {1, 2, 3, 4}),
        ]
    return lines


def tokenizer_section(ms: list[Manifest]) -> list[str]:
    lines: list[str] = []
    for t in (m for m in ms if m.stage == "tokenizer"):
        s = t.stats
        lines += ["## Tokenizer", "", f"**{headline(t)}** ({short(t.key)})."]
        if s.get("heldout"):
            rows = [
                [lang, v["documents"], v["bytes_per_token"], v["tokens_per_word"]]
                for lang, v in s["heldout"].items()
            ]
            lines += ["", *table(["held-out", "documents", "bytes/token", "tokens/word"], rows, {1, 2, 3})]
        if s.get("learned_pieces"):
            lines += ["", "First learned pieces: " + " ".join(f"`{p}`" for p in s["learned_pieces"][:20])]
    for sh in (m for m in ms if m.stage == "shards"):
        s = sh.stats
        totals = s.get("totals", {})
        split = ", ".join(f"{k} {v['tokens']:,}" for k, v in totals.items())
        lines += [
            "",
            f"Token shards ({short(sh.key)}): **{s.get('tokens', 0):,} tokens** ({split}; {s.get('dtype')}), "
            f"{s.get('bytes_per_token')} bytes/token; the corpus estimate was "
            f"{s.get('corpus_tokens_estimate', 0):,} (actual / estimate {s.get('tokens_vs_estimate')}).",
        ]
    return lines


def key_numbers_section(ms: list[Manifest]) -> list[str]:
    rows = [[m.stage, short(m.key), k, v] for m in ms if m.stage not in SPECIAL for k, v in metrics(m)]
    if not rows:
        return []
    return ["## Key numbers", "", *table(["stage", "key", "metric", "value"], rows, {3})]


def stage_section(m: Manifest, image: ImageLink) -> list[str]:
    """Any other stage: its pictures, scalar stats and record tables, straight from the manifest."""
    lines = [f"## {m.stage}", "", f"{short(m.key)}, built in {seconds(m.seconds)}; folder `{m.url}`."]
    for pic in pictures(m):
        lines += ["", f"![{m.stage} {pic}]({image(m, pic)})"]
    found = scalars(m.stats)
    if found:
        shown = found[:MAX_SCALARS]
        lines += ["", *table(["stat", "value"], [[k, v] for k, v in shown], {1})]
        if len(found) > len(shown):
            lines.append(f"\n… and {len(found) - len(shown)} more in `{m.url}/manifest.json`.")
    for name, records in record_tables(m.stats):
        cols = list(dict.fromkeys(k for r in records for k in r))
        shown = records if len(records) <= MAX_ROWS else records[: MAX_ROWS // 2] + records[-MAX_ROWS // 2 :]
        numeric = {i for i, c in enumerate(cols) if all(isinstance(r.get(c), int | float) for r in records)}
        lines += ["", f"{name}:", "", *table(cols, [[r.get(c) for c in cols] for r in shown], numeric)]
        if len(shown) < len(records):
            lines.append(f"\n({len(records)} rows; first and last {MAX_ROWS // 2} shown)")
    for name, v in m.stats.items():
        if isinstance(v, dict) and _texts(v):
            lines += ["", f"{name}:", "", *[f"- `{k!r}` → {cell(x)}" for k, x in v.items()]]
    return lines


def render(roots: list[Manifest], manifests: dict[str, Manifest], image: ImageLink, title: str) -> str:
    """The whole report: `manifests` is the lineage of `roots` (see `lineage`)."""
    ms = ordered(manifests)
    parts = [
        [f"# {title}", "", "Final artifacts: " + ", ".join(f"{m.stage} {short(m.key)}" for m in roots) + "."],
        key_numbers_section(ms),
        lineage_section(ms, manifests),
        corpus_section(ms),
        tokenizer_section(ms),
        *[stage_section(m, image) for m in ms if m.stage not in SPECIAL],
        stages_section(ms),
    ]
    return "\n\n".join("\n".join(p) for p in parts if p) + "\n"


def summary(roots: list[Manifest], manifests: dict[str, Manifest]) -> dict[str, Any]:
    """The machine-readable side of the report (report.json)."""
    ms = ordered(manifests)
    return {
        "roots": [ref(m) for m in roots],
        "stages": [
            {
                "stage": m.stage,
                "key": m.key,
                "url": m.url,
                "seconds": m.seconds,
                "created_at": m.created_at.isoformat(),
                "code_commit": m.code_commit,
                "code_version": m.code_version,
                "config_digest": config_digest(m),
                "inputs": {n: ref(i) for n, i in m.inputs.items()},
                "metrics": dict(metrics(m)),
            }
            for m in ms
        ],
        "models": [
            {"stage": m.stage, "key": m.key, "from": [ref(a) for a in ancestors(m, manifests)]}
            for m in ms
            if is_model(m)
        ],
    }

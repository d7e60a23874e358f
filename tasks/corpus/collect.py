"""Collect: every input source into JSONL shards of `{id, text, metadata: {source, path, url, lang}}`."""

from __future__ import annotations

import json
import sys

from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.extractors import Trafilatura

from tasks.config import CollectConfig, CorpusConfig
from tasks.corpus import lang as lang_module
from tasks.corpus import sources as sources_module
from tasks.corpus.lang import detect_language
from tasks.corpus.shards import shard_writer
from tasks.corpus.sources import READERS, Problem, Source, expand_inputs
from tasks.dt import counters, run_pipeline
from tasks.errors import ForjaInputError
from tasks.manifest import Manifest, StageDir, code_version, run_stage
from tasks.storage import Storage, open_url

STAGE = "collect"


class CollectSources(PipelineStep):
    """Reads this rank's share of the sources; records every skipped file or record with its reason."""

    type = "📖 - READER"
    name = "collect"

    def __init__(self, sources: list[Source], cfg: CollectConfig, problems_folder: DataFolder):
        super().__init__()
        self.sources, self.cfg, self.problems_folder = sources, cfg, problems_folder
        self._extractor = Trafilatura(favour_precision=True, deduplicate=False)

    def _report(self, problems: list[Problem]):
        def report(problem: Problem) -> None:
            if self.cfg.on_bad_input == "fail":
                where = f" ({problem.record})" if problem.record else ""
                raise ForjaInputError(f"{problem.source}{where}: {problem.reason}")
            problems.append(problem)
            self.stat_update("problems")

        return report

    def _web_pages(self, src: Source, report) -> DocumentsPipeline:
        from tasks.corpus.web import Fetcher, read_url_list

        if src.kind == "url":
            urls = [src.url]
        else:
            with open_url(src.url) as f:
                urls = read_url_list(f.read().decode("utf-8", errors="replace"))
        fetcher = Fetcher(self.cfg)
        for url in urls:
            result = fetcher.fetch(url)
            self.stat_update("urls_fetched" if result.ok else "urls_failed")
            if not result.ok:
                report(Problem(url, result.error or "fetch failed", f"{result.attempts} attempt(s)"))
                continue
            yield Document(
                text=result.text or "",
                id=url,
                metadata={"source": "url", "path": src.rel, "url": url, "format": "html"},
            )

    def _documents(self, src: Source, report) -> DocumentsPipeline:
        if src.kind in ("url", "urls"):
            yield from self._web_pages(src, report)
        else:
            yield from READERS[src.kind](src, report)

    def _finish(self, doc: Document, report) -> Document | None:
        if doc.metadata.pop("format", None) == "html":
            with self.track_time():
                text = self._extractor.extract(doc.text) or ""
            if not text.strip():
                report(Problem(doc.metadata.get("url") or doc.id, "no main text found in the HTML page"))
                return None
            doc.text = text
        if len(doc.text) < self.cfg.min_chars:
            self.stat_update("too_short")
            return None
        if doc.metadata.get("lang") not in lang_module.STOP_WORDS:
            doc.metadata["lang"] = detect_language(doc.text)
        return doc

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        problems: list[Problem] = []
        report = self._report(problems)
        for src in self.sources[rank::world_size]:
            self.stat_update(f"files_{src.kind}")
            for doc in self._documents(src, report):
                if (doc := self._finish(doc, report)) is not None:
                    self.stat_update("documents")
                    self.update_doc_stats(doc)
                    yield doc
        with self.problems_folder.open(f"{rank:05d}.jsonl", "wt") as f:
            for p in problems:
                f.write(json.dumps(p.as_dict(), ensure_ascii=False) + "\n")


def collect(
    storage: Storage, cfg: CorpusConfig, inputs: list[str] | None = None, exclude: set[str] | None = None
) -> Manifest:
    """Collect `inputs` (default: the recipe's) into shards. `exclude`: fingerprints already collected."""
    found, listing_problems = expand_inputs(inputs or cfg.collect.inputs)
    srcs = [s for s in found if not exclude or f"{s.url}@{s.fingerprint}" not in exclude]
    if not found:
        raise ForjaInputError(
            f"no collectable files in {inputs or cfg.collect.inputs}; "
            "supported: .txt .md .jsonl(.gz) .parquet .warc(.gz) .wet(.gz) .urls, http(s) URLs"
        )
    if cfg.collect.on_bad_input == "fail" and listing_problems:
        raise ForjaInputError(f"{listing_problems[0].source}: {listing_problems[0].reason}")
    tasks = max(1, min(cfg.tasks, len(srcs)))
    key_config = {
        "collect": cfg.collect.model_dump(mode="json", exclude={"inputs"}),
        "tasks": tasks,
        "sources": [f"{s.url}@{s.fingerprint}" for s in srcs],
    }

    def build(out: StageDir) -> dict:
        if not srcs:  # a refresh with nothing new: an empty, valid artifact
            out.storage.write_bytes_atomic(b"", STAGE, out.key, "shards", "00000.jsonl.gz")
            return {"documents": 0, "problems": 0, "new_sources": 0}
        stats = run_pipeline(
            [CollectSources(srcs, cfg.collect, out.folder("problems")), shard_writer(out.folder("shards"))],
            out.work("logs"),
            tasks=tasks,
            workers=cfg.workers,
        )
        problems = [p.as_dict() for p in listing_problems]
        for name in out.folder("problems").list_files():
            with out.folder("problems").open(name, "rt") as f:
                problems += [json.loads(line) for line in f if line.strip()]
        out.storage.write_json_atomic(problems, STAGE, out.key, "problems.json")
        c = counters(stats, "collect")
        return {
            "documents": int(c.get("documents", 0)),
            "new_sources": len(srcs),
            "files_by_kind": {k[6:]: int(v) for k, v in c.items() if k.startswith("files_")},
            "urls_fetched": int(c.get("urls_fetched", 0)),
            "urls_failed": int(c.get("urls_failed", 0)),
            "problems": len(problems),
            "problem_samples": problems[:20],
        }

    version = code_version(sys.modules[__name__], sources_module, lang_module)
    return run_stage(storage, STAGE, key_config, {}, version, build)

"""The report card as a stage: `<root>/report/<key>/report.md` (+ report.json and the pictures it shows),
a stable pointer `<root>/report/latest.json`, and the same page as a Prefect markdown artifact.

The key hashes the keys of the artifacts it describes, so an unchanged pipeline reuses its report and a
changed one gets a new folder; `latest.json` names the report of the most recent run.
"""

from __future__ import annotations

import base64
import mimetypes
import sys
from datetime import UTC, datetime

from prefect.artifacts import create_markdown_artifact

from tasks import report
from tasks.manifest import InputRef, Manifest, StageDir, code_version, read_manifest, run_stage
from tasks.prefect_utils import stage_task
from tasks.storage import Storage

STAGE = "report"
POINTER = "latest.json"
TITLE = "Forja report card"
ARTIFACT_KEY = "forja-report"


def _lineage(storage: Storage, roots: list[Manifest]) -> dict[str, Manifest]:
    def read(inp: InputRef) -> Manifest | None:
        return read_manifest(storage, inp.stage, inp.key)

    return report.lineage(roots, read)


def picture_name(m: Manifest, path: str) -> str:
    return f"{m.stage}-{m.key[:8]}-{path.replace('/', '-')}"


def build_report(storage: Storage, results: dict[str, Manifest]) -> Manifest:
    """Write (or reuse) the report of `results`, the final manifests of a pipeline run, and point
    `report/latest.json` at it."""
    roots = list({report.ref(m): m for m in results.values()}.values())

    def build(out: StageDir) -> dict:
        manifests = _lineage(storage, roots)

        def copy(m: Manifest, path: str) -> str:
            name = picture_name(m, path)
            storage.fs.cp_file(storage.path(m.stage, m.key, path), out.path(name))
            return name

        markdown = report.render(roots, manifests, copy, TITLE)
        storage.write_bytes_atomic(markdown.encode(), STAGE, out.key, "report.md")
        data = report.summary(roots, manifests)
        storage.write_json_atomic(data, STAGE, out.key, "report.json")
        return {
            "report": out.url("report.md"),
            "stages": len(manifests),
            "models": [f"{m['stage']}/{m['key']}" for m in data["models"]],
        }

    version = code_version(report, sys.modules[__name__])
    m = run_stage(storage, STAGE, {}, {n: r for n, r in results.items()}, version, build)
    storage.write_json_atomic(
        {
            "key": m.key,
            "report": m.stats["report"],
            "manifest": f"{m.url}/manifest.json",
            "roots": [report.ref(r) for r in roots],
            "updated_at": datetime.now(UTC).isoformat(),
        },
        STAGE,
        POINTER,
    )
    return m


def latest_report(storage: Storage) -> str | None:
    """URL of the report.md of the most recent pipeline run on this storage root."""
    import json

    if not storage.exists(STAGE, POINTER):
        return None
    return json.loads(storage.read_text(STAGE, POINTER))["report"]


def artifact_markdown(storage: Storage, results: dict[str, Manifest]) -> str:
    """The report with its pictures inlined (the Prefect UI cannot reach the storage root)."""
    roots = list({report.ref(m): m for m in results.values()}.values())

    def inline(m: Manifest, path: str) -> str:
        mime = mimetypes.guess_type(path)[0] or "image/png"
        data = base64.b64encode(storage.fs.cat_file(storage.path(m.stage, m.key, path))).decode()
        return f"data:{mime};base64,{data}"

    return report.render(roots, _lineage(storage, roots), inline, TITLE)


def _report(storage: Storage, results: dict[str, Manifest]) -> Manifest:
    m = build_report(storage, results)
    create_markdown_artifact(
        key=ARTIFACT_KEY,
        markdown=artifact_markdown(storage, results) + f"\n\nThis page is also `{m.stats['report']}`.\n",
        description="Report card: corpus, tokenizer, curves, metrics, time per stage and lineage",
    )
    return m


report_task = stage_task(_report, "report")

"""Regenerate the bundled evaluation subsets in data/eval/ from the original datasets.

    python data/build_eval.py [--shared ../shared/data]

Writes
- hellaswag/val-400.txt: every 25th task of the HellaSwag validation set (first 400 of them), in the
  6-line text format of the original file (context / gold label / four endings);
- gsm8k/test-300.jsonl: GSM8K test problems 251-550, lines unchanged (problems 1-250 are MGSM's);
- mgsm/mgsm_en.tsv, mgsm/mgsm_es.tsv: MGSM English and Spanish, unchanged;
- bpb/en.txt, bpb/es.txt: the chapters after the training sample's 25 (Pride and Prejudice from chapter 26,
  Don Quijote from chapter 26), cleaned like the sample, until each file holds at least 25 kB: held-out
  text for bits per byte.
Reruns give the same bytes. data/NOTICE.md lists the sources and licences.
"""

from __future__ import annotations

import argparse
import bz2
import shutil
from pathlib import Path

import build_sample  # data/build_sample.py: the same chapter splitting and clean-up as the sample

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "eval"
HELLASWAG_EVERY, HELLASWAG_ITEMS = 25, 400
GSM8K_SLICE = slice(250, 550)
HELDOUT_FROM, HELDOUT_BYTES = 25, 25_000


def hellaswag_subset(src: Path) -> str:
    lines = bz2.decompress((src / "eval/hellaswag/hellaswag_val_full.txt.bz2").read_bytes()).decode()
    lines = lines.splitlines()
    tasks = [lines[i : i + 6] for i in range(0, len(lines) - 5, 6)]
    picked = tasks[::HELLASWAG_EVERY][:HELLASWAG_ITEMS]
    return "".join(line + "\n" for task in picked for line in task)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared/data", help="source datasets")
    src = ap.parse_args().shared
    shutil.rmtree(OUT, ignore_errors=True)
    for sub in ("hellaswag", "gsm8k", "mgsm", "bpb"):
        (OUT / sub).mkdir(parents=True)

    (OUT / "hellaswag/val-400.txt").write_text(hellaswag_subset(src), encoding="utf-8")
    test = (src / "rl/gsm8k/test.jsonl").read_text("utf-8").splitlines(keepends=True)
    (OUT / "gsm8k/test-300.jsonl").write_text("".join(test[GSM8K_SLICE]), encoding="utf-8")
    for lang in ("en", "es"):
        shutil.copyfile(src / f"rl/mgsm/mgsm_{lang}.tsv", OUT / f"mgsm/mgsm_{lang}.tsv")

    build_sample.N_CHAPTERS = HELDOUT_FROM + 10  # the sample stops at chapter 25; read on
    for lang, chapters in (("en", build_sample.pride_chapters), ("es", build_sample.quijote_chapters)):
        texts: list[str] = []
        for d in chapters(src)[HELDOUT_FROM:]:
            texts.append(d["text"])
            if len("\n\n".join(texts).encode()) >= HELDOUT_BYTES:
                break
        (OUT / f"bpb/{lang}.txt").write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    for path in sorted(OUT.rglob("*.*")):
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()

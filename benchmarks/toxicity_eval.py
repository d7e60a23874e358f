"""Train (optionally) and evaluate the toxicity scorers on held-out English and Spanish data.

    python benchmarks/toxicity_eval.py [--train] [--shared ../shared/data]

Data (from the shared data folder, not shipped with the repo):
- English: Davidson et al. tweets; hate speech and offensive language are toxic, 'neither' is clean.
- Spanish: Debian fortunes-es; the `off/` files (ROT13) are toxic, `es/` clean. Labels are per file,
  so some 'toxic' entries are harmless and some clean ones are crude.
Each dataset is split 80/20 by a stable hash of the text; only the 20 % is scored here.
With --train the classifier is fitted on the 80 % and written to tasks/resources/toxicity-classifier.json.
Clean prose (XQuAD Wikipedia paragraphs, two Gutenberg novels; not used in training) shows how much
ordinary text each scorer would drop, and a few neutral sentences naming groups of people show whether
the classifier learned topics (fortunes-es files the women-related jokes under off/) instead of abuse.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import json
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks.config import DetoxConfig  # noqa: E402
from tasks.corpus.toxicity import (  # noqa: E402
    ClassifierScorer,
    WordListScorer,
    classifier_features,
    default_model_path,
    save_model,
)

SEED = 1234
BUCKETS = 1 << 17
C_GRID = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
WORDLIST_THRESHOLDS = (1e-9, 0.01, 0.02, 0.05, 0.1)  # 1e-9: any listed word drops the document, as in C4
CLASSIFIER_THRESHOLDS = (0.3, 0.5, 0.7)
# Neutral sentences that name groups: a classifier that learned topics instead of abuse flags these.
IDENTITY_PROBES = {
    "en": [
        "My wife and I went to the movies on Saturday.",
        "The girls played football after school.",
        "Women scientists have contributed a lot to modern medicine.",
        "Our gay neighbours invited us to their wedding.",
        "Black families settled in the valley in 1870.",
    ],
    "es": [
        "Mi mujer y yo fuimos al cine el sábado.",
        "Las niñas jugaron al fútbol después de clase.",
        "Las mujeres científicas han contribuido mucho a la medicina moderna.",
        "Nuestros vecinos gais nos invitaron a su boda.",
        "Mi marido cocina muy bien los domingos.",
    ],
}


@dataclass
class Dataset:
    name: str
    lang: str
    texts: list[str]
    labels: np.ndarray  # 1 toxic, 0 clean

    def split(self, held_out: bool, salt: str = "") -> Dataset:
        keep = [in_held_out(t, salt) == held_out for t in self.texts]
        return Dataset(
            self.name,
            self.lang,
            [t for t, k in zip(self.texts, keep, strict=True) if k],
            self.labels[np.asarray(keep, dtype=bool)],
        )


def in_held_out(text: str, salt: str = "") -> bool:
    """Deterministic 20 % by a stable hash, so duplicates always fall on the same side."""
    return zlib.crc32((salt + text).encode("utf-8")) % 5 == 0


def dedup(pairs: list[tuple[str, int]]) -> tuple[list[str], np.ndarray]:
    """One copy per text; texts seen with both labels are dropped as unusable."""
    seen: dict[str, int] = {}
    for text, label in pairs:
        seen[text] = label if seen.get(text, label) == label else -1
    kept = [(t, lab) for t, lab in seen.items() if lab >= 0]
    return [t for t, _ in kept], np.asarray([lab for _, lab in kept], dtype=np.int64)


def load_davidson(shared: Path) -> Dataset:
    path = shared / "toxicity" / "toxicity-davidson-hate-offensive" / "labeled_data.csv"
    with path.open(encoding="utf-8", newline="") as f:
        pairs = [(row["tweet"].strip(), int(row["class"] in ("0", "1"))) for row in csv.DictReader(f)]
    return Dataset("davidson-en", "en", *dedup([p for p in pairs if p[0]]))


def read_fortunes(path: Path, rot13: bool) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if rot13:
        text = codecs.decode(text, "rot13")
    entries = []
    for entry in re.split(r"^%\s*$", text, flags=re.MULTILINE):
        # Attribution lines ('-- Nietzsche') appear in both sections and only teach author names.
        lines = [ln for ln in entry.splitlines() if not ln.strip().startswith("--")]
        body = " ".join(" ".join(lines).split())
        if body:
            entries.append(body)
    return entries


def load_fortunes(shared: Path) -> Dataset:
    root = shared / "corpus" / "fortunes-es"
    pairs = [(t, 1) for p in sorted((root / "off").glob("*.fortunes")) for t in read_fortunes(p, True)]
    pairs += [(t, 0) for p in sorted((root / "es").glob("*.fortunes")) for t in read_fortunes(p, False)]
    return Dataset("fortunes-es", "es", *dedup(pairs))


def load_clean_prose(shared: Path) -> dict[str, tuple[str, list[str]]]:
    """Ordinary text that no scorer should drop: XQuAD Wikipedia paragraphs and two public-domain novels."""
    out: dict[str, tuple[str, list[str]]] = {}
    for lang in ("en", "es"):
        path = shared / "corpus" / "xquad" / f"xquad.{lang}.json"
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            paragraphs = [p["context"] for article in data["data"] for p in article["paragraphs"]]
            out[f"xquad-{lang} (Wikipedia)"] = (lang, paragraphs)
    novels = (("en", "gutenberg-en", "Pride and Prejudice"), ("es", "gutenberg-es", "Quijote"))
    for lang, folder, title in novels:
        texts = []
        for path in sorted((shared / "corpus" / folder).glob("*.txt")):
            paragraphs = re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))
            texts += [" ".join(p.split()) for p in paragraphs if len(p.split()) >= 40]
        if texts:
            out[f"{folder} ({title})"] = (lang, texts)
    return out


def feature_matrix(texts: list[str]):
    from scipy.sparse import csr_matrix

    rows = [classifier_features(t, BUCKETS) for t in texts]
    indptr = np.cumsum([0] + [len(i) for i, _ in rows])
    indices = np.concatenate([i for i, _ in rows])
    values = np.concatenate([v for _, v in rows])
    return csr_matrix((values, indices, indptr), shape=(len(texts), BUCKETS))


def balanced_weights(parts: list[Dataset]) -> np.ndarray:
    """Each dataset's toxic and clean halves weigh the same, so neither the language nor Davidson's
    83 % toxic prior is learned as a signal of toxicity."""
    out = []
    for d in parts:
        n, pos = len(d.labels), int(d.labels.sum())
        out.append(np.where(d.labels == 1, n / (2 * max(pos, 1)), n / (2 * max(n - pos, 1))))
    return np.concatenate(out)


def fit(parts: list[Dataset], c: float):
    from sklearn.linear_model import LogisticRegression

    x = feature_matrix([t for d in parts for t in d.texts])
    y = np.concatenate([d.labels for d in parts])
    model = LogisticRegression(C=c, max_iter=2000, random_state=SEED)
    model.fit(x, y, sample_weight=balanced_weights(parts))
    return model


def train(train_parts: list[Dataset], out: Path) -> dict:
    """Pick C on a hash-split validation slice of the training data, refit on all of it, save."""
    inner_train = [d.split(held_out=False, salt="val") for d in train_parts]
    inner_val = [d.split(held_out=True, salt="val") for d in train_parts]
    search = {}
    for c in C_GRID:
        model = fit(inner_train, c)
        f1s = [
            prf(d.labels, model.predict_proba(feature_matrix(d.texts))[:, 1] >= 0.5)["f1"] for d in inner_val
        ]
        search[c] = float(np.mean(f1s))
        print(f"  C={c:<4} validation F1 (mean of datasets) {search[c]:.3f}")
    best = max(search, key=lambda c: search[c])
    model = fit(train_parts, best)
    meta = {
        "features": "word 1-2-grams + char 3-5-grams within words, crc32-hashed, log1p counts, L2-normalised",
        "trained_on": {d.name: {"docs": len(d.texts), "toxic": int(d.labels.sum())} for d in train_parts},
        "C": best,
        "seed": SEED,
    }
    save_model(out, model.coef_[0], float(model.intercept_[0]), meta)
    print(f"  wrote {out.relative_to(REPO)} (C={best}, {out.stat().st_size / 1e6:.2f} MB)")
    return {"C": best, "validation_f1_by_C": search}


def prf(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {
        "precision": round(p, 4),
        "recall": round(r, 4),
        "f1": round(f1, 4),
        "flagged": round(float(pred.mean()), 4),
    }


def evaluate(test_parts: list[Dataset], prose: dict[str, tuple[str, list[str]]]) -> dict:
    from sklearn.metrics import roc_auc_score

    cfg = DetoxConfig()
    wordlist, clf = WordListScorer(), ClassifierScorer()
    rows, datasets = [], {}
    for d in test_parts:
        base = float(d.labels.mean())
        datasets[d.name] = {
            "lang": d.lang,
            "held_out": len(d.texts),
            "toxic_share": round(base, 4),
            "always_toxic_f1": round(2 * base / (1 + base), 4),
        }
        w = np.asarray([wordlist.score(t, d.lang) for t in d.texts])
        c = np.asarray([clf.score(t, d.lang) for t in d.texts])
        datasets[d.name]["classifier_roc_auc"] = round(float(roc_auc_score(d.labels, c)), 4)
        for name, scores, thresholds, default in (
            ("wordlist", w, WORDLIST_THRESHOLDS, cfg.wordlist_threshold),
            ("classifier", c, CLASSIFIER_THRESHOLDS, cfg.classifier_threshold),
        ):
            for th in thresholds:
                rows.append(
                    {
                        "dataset": d.name,
                        "scorer": name,
                        "threshold": th,
                        "default": th == default,
                        **prf(d.labels, scores >= th),
                    }
                )
    clean = {}
    for name, (lang, texts) in prose.items():
        clean[name] = {
            "paragraphs": len(texts),
            "dropped_wordlist": round(
                float(np.mean([wordlist.score(t, lang) >= cfg.wordlist_threshold for t in texts])), 4
            ),
            "dropped_classifier": round(
                float(np.mean([clf.score(t, lang) >= cfg.classifier_threshold for t in texts])), 4
            ),
        }
    probes = {
        lang: {t: round(clf.score(t, lang), 4) for t in texts} for lang, texts in IDENTITY_PROBES.items()
    }
    return {"datasets": datasets, "results": rows, "clean_prose": clean, "identity_probes_classifier": probes}


def print_report(report: dict) -> None:
    for name, d in report["datasets"].items():
        print(
            f"\n{name}: {d['held_out']} held-out docs, {d['toxic_share']:.0%} toxic "
            f"(flagging everything already gives F1 {d['always_toxic_f1']:.3f}); "
            f"classifier ROC AUC {d['classifier_roc_auc']:.3f}"
        )
        print(f"  {'scorer':<11}{'threshold':>10}{'precision':>11}{'recall':>8}{'F1':>7}{'flagged':>9}")
        for r in report["results"]:
            if r["dataset"] == name:
                th = "any" if r["threshold"] < 1e-6 else f"{r['threshold']:g}"
                mark = " *" if r["default"] else ""
                print(
                    f"  {r['scorer']:<11}{th:>10}{r['precision']:>11.3f}{r['recall']:>8.3f}"
                    f"{r['f1']:>7.3f}{r['flagged']:>9.1%}{mark}"
                )
    print("  (* = default threshold in DetoxConfig)")
    print("\nclean prose (paragraphs of 40+ words) dropped at the default thresholds:")
    for name, c in report["clean_prose"].items():
        print(
            f"  {name:<36}{c['paragraphs']:>6} paragraphs   wordlist {c['dropped_wordlist']:>6.1%}"
            f"   classifier {c['dropped_classifier']:>6.1%}"
        )
    threshold = DetoxConfig().classifier_threshold
    print(f"\nneutral sentences naming groups, classifier score (>= {threshold} drops):")
    for lang, scores in report["identity_probes_classifier"].items():
        for text, score in scores.items():
            print(f"  {lang} {score:.3f}  {text}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", action="store_true", help="fit the classifier and overwrite the shipped model")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "toxicity_eval.json")
    args = ap.parse_args()

    data = [load_davidson(args.shared), load_fortunes(args.shared)]
    report: dict = {"seed": SEED, "split": "held out: crc32(text) % 5 == 0"}
    if args.train:
        print("training the classifier")
        report["training"] = train([d.split(held_out=False) for d in data], default_model_path())
    report.update(evaluate([d.split(held_out=True) for d in data], load_clean_prose(args.shared)))
    print_report(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

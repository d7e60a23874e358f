"""Toxicity scorers and filter, on the word lists and classifier shipped in tasks/resources."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from datatrove.data import Document

from tasks.config import DetoxConfig
from tasks.corpus.toxicity import (
    ClassifierScorer,
    ToxicityFilter,
    WordListScorer,
    build_toxicity_filter,
    classifier_features,
    default_model_path,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT = DetoxConfig()

CLEAN_EN = [
    "The committee met on Tuesday to review the budget for the new public library. Several residents asked "
    "whether the reading room would stay open on weekends, and the council promised a decision by March.",
    "Our class visited the museum, where a guide explained how the ancient glassmakers passed their "
    "techniques from one generation to the next.",
]
CLEAN_ES = [
    "¿Sabías que el pequeño pueblo de montaña celebra cada año una feria de artesanía? ¡Los niños esperan "
    "con ilusión el desfile y la señora Núñez prepara churros para todos!",
    "El año pasado, la compañía ferroviaria inauguró una nueva línea entre Logroño y Pamplona, lo que "
    "redujo el tiempo de viaje a menos de una hora.",
]
TOXIC_EN = "fuck this shit, you are a worthless cunt and a dumb ass bitch"
TOXIC_ES = "vete a la mierda, hijo de puta, gilipollas de mierda"


@pytest.fixture(scope="module")
def wordlist() -> WordListScorer:
    return WordListScorer()


@pytest.fixture(scope="module")
def classifier() -> ClassifierScorer:
    return ClassifierScorer()


# --- word lists ---------------------------------------------------------------------------------------------


def test_wordlist_matches_whole_words_only(wordlist: WordListScorer) -> None:
    innocent = "The class assessment passed; the assistant bassist analysed Scunthorpe's cocktails."
    assert wordlist.hits(innocent, "en") == (0, 11)  # "Scunthorpe's" is two words
    assert wordlist.hits("What an ass.", "en") == (1, 3)


def test_wordlist_spanish_accents_and_enye(wordlist: WordListScorer) -> None:
    assert wordlist.hits("¡Qué cabrón!", "es") == (1, 2)
    assert wordlist.hits("¡Coño, otra vez!", "es") == (1, 3)
    # Decomposed text (n + combining tilde) is the same word after normalisation.
    assert wordlist.hits(unicodedata.normalize("NFD", "¡Coño!"), "es") == (1, 1)
    # No accent guessing: 'cono' (cone) and 'pezon' are different words from the listed 'coño', 'pezón'.
    assert wordlist.hits("un cono de helado", "es") == (0, 4)


def test_wordlist_phrases_count_once_per_occurrence(wordlist: WordListScorer) -> None:
    # 'hijo de puta' is one entry although 'puta' is one too; the longest entry wins.
    assert wordlist.hits("Ese hijo de puta se fue.", "es") == (1, 6)
    assert wordlist.hits("blue waffle and blue waffle", "en") == (2, 5)
    assert wordlist.hits("a blue sky and a waffle", "en") == (0, 6)


def test_wordlist_language_routing(wordlist: WordListScorer) -> None:
    # 'mierda' is on the Spanish list only; unknown languages get both lists.
    assert wordlist.hits("mierda", "en") == (0, 1)
    assert wordlist.hits("mierda", "es-ES") == (1, 1)
    assert wordlist.hits("mierda", "und") == (1, 1)
    assert wordlist.hits("mierda", "fr") == (1, 1)


def test_wordlist_explicit_lists() -> None:
    scorer = WordListScorer({"en": ["darn", "heck no"], "es": ["caramba"]})
    assert scorer.score("darn it, heck no", "en") == pytest.approx(2 / 4)
    assert scorer.score("caramba", "en") == 0.0


@pytest.mark.parametrize("lang,text", [("en", t) for t in CLEAN_EN] + [("es", t) for t in CLEAN_ES])
def test_wordlist_clean_prose_scores_zero(wordlist: WordListScorer, lang: str, text: str) -> None:
    assert wordlist.score(text, lang) == 0.0


@pytest.mark.parametrize("lang,text", [("en", TOXIC_EN), ("es", TOXIC_ES)])
def test_wordlist_dense_toxic_text_is_over_threshold(wordlist: WordListScorer, lang: str, text: str) -> None:
    assert wordlist.score(text, lang) > 10 * DEFAULT.wordlist_threshold


# --- classifier ---------------------------------------------------------------------------------------------


def test_shipped_model_is_small_and_complete() -> None:
    path = default_model_path()
    assert path.stat().st_size < 2_000_000
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert len(doc["weights"]) == doc["buckets"]


@pytest.mark.parametrize(
    "offensive,neutral",
    [
        (
            "shut up you stupid bitch, nobody likes you, fucking whore",
            "The library opens at nine and the children's reading hour starts at ten.",
        ),
        (
            "Cállate, puta de mierda, eres una zorra asquerosa y un cabrón",
            "La biblioteca abre a las nueve y la hora del cuento empieza a las diez.",
        ),
    ],
)
def test_classifier_ranks_offensive_above_neutral(
    classifier: ClassifierScorer, offensive: str, neutral: str
) -> None:
    bad, good = classifier.score(offensive, "und"), classifier.score(neutral, "und")
    assert 0.0 <= good < DEFAULT.classifier_threshold
    assert bad > good + 0.2


@pytest.mark.parametrize("text", CLEAN_EN + CLEAN_ES)
def test_classifier_keeps_clean_prose(classifier: ClassifierScorer, text: str) -> None:
    assert classifier.score(text, "und") < DEFAULT.classifier_threshold


def test_classifier_features_do_not_depend_on_hash_seed() -> None:
    code = (
        "from tasks.corpus.toxicity import classifier_features as f; "
        "print(f('¡Hola, señor Núñez! hello world', 1 << 17)[0].tolist())"
    )
    runs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
        )
        runs.append(out.stdout)
    assert runs[0] == runs[1]
    assert json.loads(runs[0]) == classifier_features("¡Hola, señor Núñez! hello world", 1 << 17)[0].tolist()


# --- filter -------------------------------------------------------------------------------------------------


def _docs() -> list[Document]:
    return [
        Document(text=CLEAN_EN[0], id="clean-en", metadata={"lang": "en"}),
        Document(text=CLEAN_ES[0], id="clean-es", metadata={"lang": "es"}),
        Document(text=TOXIC_EN, id="toxic-en", metadata={"lang": "en"}),
        Document(text=TOXIC_ES, id="toxic-es", metadata={}),  # no language: both lists apply
    ]


def test_filter_drops_with_reason_and_records_scores() -> None:
    filt = ToxicityFilter([(WordListScorer(), DEFAULT.wordlist_threshold)])
    docs = _docs()
    verdicts = [filt.filter(d) for d in docs]
    assert verdicts == [True, True, (False, "toxic_wordlist"), (False, "toxic_wordlist")]
    assert docs[0].metadata["toxicity_wordlist"] == 0.0
    assert docs[3].metadata["toxicity_wordlist"] == round(WordListScorer().score(TOXIC_ES, "und"), 4) > 0


def test_filter_in_a_pipeline_counts_reasons() -> None:
    filt = build_toxicity_filter(DetoxConfig(scorer="any"))
    assert [(s.name, t) for s, t in filt.scorers] == [
        ("wordlist", DEFAULT.wordlist_threshold),
        ("classifier", 0.5),
    ]
    kept = list(filt.run(iter(_docs())))
    assert [d.id for d in kept] == ["clean-en", "clean-es"]
    assert all({"toxicity_wordlist", "toxicity_classifier"} <= d.metadata.keys() for d in kept)
    assert filt.stats["dropped"].total == 2
    assert filt.stats["dropped_toxic_wordlist"].total == 2


def test_classifier_only_filter_reason() -> None:
    filt = build_toxicity_filter(DetoxConfig(scorer="classifier"))
    doc = Document(text="shut up you stupid bitch, nobody likes you", id="x", metadata={"lang": "en"})
    assert filt.filter(doc) == (False, "toxic_classifier")
    assert "toxicity_wordlist" not in doc.metadata
    assert doc.metadata["toxicity_classifier"] >= 0.5


def test_filter_survives_pickle_round_trip() -> None:
    filt = build_toxicity_filter(DetoxConfig(scorer="any"))
    filt.filter(_docs()[2])  # load the lists and weights first: the copy must not carry them
    blob = pickle.dumps(filt)
    assert len(blob) < 50_000
    copy = pickle.loads(blob)
    for original, restored in zip(_docs(), _docs(), strict=True):
        assert copy.filter(restored) == filt.filter(original)
        assert restored.metadata == original.metadata

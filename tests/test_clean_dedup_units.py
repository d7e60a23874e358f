"""Units of the clean and dedup stages, on English and Spanish text."""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.dedup import MinhashDedupSignature

from tasks.config import DedupConfig
from tasks.corpus.clean import ByLanguage, GopherQuality, NormalizeText, RedactPII, _gopher_quality
from tasks.corpus.dedup import FastMinhashSignature, exact_content, minhash_config
from tasks.corpus.lang import detect_language

ES = (
    "El hidalgo don Quijote de la Mancha salió de su aldea una mañana de julio, antes del alba. "
    "¿Adónde iría? Nadie lo sabía, pero él estaba seguro de que la fortuna lo esperaba en el camino. "
    "Llevaba una lanza vieja, un escudo de cuero y un caballo flaco al que llamó Rocinante. "
    "En el año 1605, según la historia, recorrió 3 leguas (unos 15 km) antes de mediodía. "
    "¡Qué aventura tan extraña fue aquella para un señor de cincuenta años! "
) * 2


def test_language_detection():
    assert detect_language(ES) == "es"
    assert (
        detect_language("The quick brown fox jumps over the lazy dog and then it runs away from the farm.")
        == "en"
    )
    assert detect_language("12 34 56 78 90 11 22") == "und"


def test_normalize_and_pii():
    text = "Cafe\u0301 con n\u0303\r\nline\x07 two   \r\n"
    assert NormalizeText("NFC").format(text) == "Café con ñ\nline two"
    redacted = RedactPII().format(
        "Escríbeme a maria.núñez@correo.es o al 8.8.8.8, ¿vale? Or bob@mail.example.com."
    )
    assert "núñez" not in redacted and "8.8.8.8" not in redacted and "bob@" not in redacted
    assert redacted.startswith("Escríbeme a email@example.com o al ") and redacted.endswith(
        "¿vale? Or firstname.lastname@example.org."
    )
    private = RedactPII().format("El router está en 192.168.1.1 y no es público.")
    assert "192.168.1.1" in private


def test_gopher_alpha_rule_counts_whitespace_words():
    doc = Document(text=ES, id="es", metadata={"lang": "es"})
    assert GopherQuality("es").filter(doc) is True
    numbers = Document(text="1605, 1615, 2024; " * 60 + ES[:400], id="n", metadata={"lang": "es"})
    assert GopherQuality("es").filter(numbers) == (False, "gopher_below_alpha_threshold")


def test_filters_route_by_language():
    gopher = ByLanguage("gopher_quality", _gopher_quality)
    assert gopher.filter(Document(text=ES, id="es", metadata={"lang": "es"})) is True
    # Spanish prose judged with English stop words alone would fail Gopher's stop-word rule.
    assert gopher._by_lang["es"].stop_words >= {"de", "la", "que"}


def _lsh_buckets(step, text):
    return {tuple(b) for b in step.get_signature(step.get_shingles(text))}


def test_fast_signature_matches_spacy_shingling(tmp_path):
    cfg = minhash_config(DedupConfig())
    fast = FastMinhashSignature(str(tmp_path / "a"), cfg)
    slow = MinhashDedupSignature(str(tmp_path / "b"), cfg, language="es")
    variant = ES.replace("flaco", "delgado").replace("vieja", "antigua")
    for step in (fast, slow):
        assert step.get_shingles(ES).shape[1] == 1
        assert len(_lsh_buckets(step, ES) & _lsh_buckets(step, ES)) == cfg.num_buckets

    # The same 5-grams as the spaCy path up to tokenisation details, so the same similarities.
    def jaccard(step):
        a, b = set(step.get_shingles(ES).ravel()), set(step.get_shingles(variant).ravel())
        return len(a & b) / len(a | b)

    n_fast, n_slow = (len(set(step.get_shingles(ES).ravel())) for step in (fast, slow))
    assert abs(n_fast - n_slow) <= 0.05 * n_slow
    assert abs(jaccard(fast) - jaccard(slow)) < 0.03
    other = "Texto completamente distinto sobre la lluvia en Sevilla y los trenes de cercanías. " * 4
    assert not _lsh_buckets(fast, ES) & _lsh_buckets(fast, other)


def test_exact_content_ignores_spacing():
    a = Document(text="Hola,  mundo\n\n¿qué tal?", id="a")
    b = Document(text="Hola, mundo ¿qué tal?", id="b")
    assert exact_content(a) == exact_content(b)

"""The `forja` command as a user runs it: exit codes, --json, messages that name the fix."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import BAD, REPO


def forja(*args, cwd=REPO, env_extra=None):
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_bad_config_exits_2_and_names_the_key(tmp_path):
    r = forja("corpus", "--storage", str(tmp_path), "--set", "corpus.dedup.num_buckets=-3")
    assert r.returncode == 2
    assert "corpus.dedup.num_buckets" in r.stderr and r.stdout == ""


def test_missing_input_exits_2(tmp_path):
    r = forja("corpus", "--storage", str(tmp_path), "--input", str(tmp_path / "nope"))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_fail_fast_on_bad_record_exits_2(tmp_path):
    r = forja(
        "corpus",
        "--storage",
        str(tmp_path),
        "--input",
        str(BAD / "broken-line.jsonl"),
        "--set",
        "corpus.collect.on_bad_input=fail",
    )
    assert r.returncode == 2
    assert "broken-line.jsonl (line 4): invalid JSON" in r.stderr


SENTENCES = [
    "La biblioteca pública abre a las nueve de la mañana y cierra a las ocho de la tarde.",
    "Los lectores pueden pedir libros en español, inglés y catalán sin pagar nada.",
    "¿Hay que reservar sitio? No hace falta, salvo en época de exámenes.",
    "Durante el verano, el horario cambia y la sala de estudio se llena de estudiantes.",
    "El edificio, construido en 1912, tiene una cúpula de cristal y un jardín interior.",
    "Cada jueves hay un club de lectura donde se comentan novelas de autores jóvenes.",
    "La directora, señora Ibáñez, quiere ampliar la sección infantil el año próximo.",
    "Los voluntarios ayudan a las personas mayores a usar los ordenadores de la sala.",
]


def test_json_output_is_the_manifest(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        text = "\n".join(" ".join(SENTENCES[(i + j) % 8 :] + SENTENCES[: (i + j) % 8]) for j in range(3))
        (src / f"doc{i}.txt").write_text(f"Documento {i}.\n{text}\n", encoding="utf-8")
    r = forja(
        "corpus",
        "--json",
        "--storage",
        str(tmp_path / "store"),
        "--input",
        str(src),
        "--set",
        "corpus.clean.gopher_repetition=false",
        env_extra={"PREFECT_HOME": str(tmp_path / "prefect")},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads(r.stdout)
    assert manifest["stage"] == "stats" and manifest["stats"]["languages"]["es"]["documents"] >= 1
    assert (tmp_path / "store" / "stats" / manifest["key"] / "manifest.json").exists()
    # no server configured: the runs went to a temporary API over PREFECT_HOME's database, now stopped
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        runs = db.execute(
            "SELECT flow.name, flow_run.state_type FROM flow_run JOIN flow ON flow.id = flow_run.flow_id"
        ).fetchall()
    assert ("corpus", "COMPLETED") in runs
    assert not _servers_of(tmp_path / "prefect")


def _servers_of(prefect_home) -> list[int]:
    """Processes still serving Prefect's API over this PREFECT_HOME."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"uvicorn" in cmdline and f"PREFECT_HOME={prefect_home}".encode() in environ:
            found.append(int(proc.name))
    return found


def test_empty_corpus_is_explained(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "repetitive.txt").write_text("Hola hola hola, ¿qué tal? Muy bien.\n" * 40, encoding="utf-8")
    r = forja(
        "corpus",
        "--storage",
        str(tmp_path / "store"),
        "--input",
        str(src),
        env_extra={"PREFECT_HOME": str(tmp_path / "prefect")},
    )
    assert r.returncode == 2, r.stderr[-3000:]
    assert "the corpus is empty (collect 1 -> 1, clean 1 -> 0" in r.stderr
    assert "/removed/" in r.stderr and "corpus.clean" in r.stderr

"""`forja`: one subcommand per flow, the same options everywhere.

Exit codes: 0 success, 2 bad input or configuration (the message names the file/record/key and the fix),
1 any other failure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

# Prefect reads its settings at import: quiet, patient defaults for a laptop with no server.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "forja")  # stage logs reach the Prefect UI
os.environ.setdefault("FORJA_PROGRESS", "0")  # training reports through the command's own progress bar
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see tasks/launcher.py: torch is not imported yet
# Prefect creates its home folder without parents and then waits for its server until the timeout
if home := os.environ.get("PREFECT_HOME"):
    Path(home).expanduser().mkdir(parents=True, exist_ok=True)
if os.environ.get("FORJA_VERBOSE") != "1":
    os.environ.setdefault("TQDM_DISABLE", "1")  # datatrove's inner bars; the command draws its own

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Forja: train a language model end to end."
)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Recipe (YAML).")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override: key.path=value (repeatable).")
]
StorageOpt = Annotated[
    str | None, typer.Option("--storage", help="Storage root: folder or s3://bucket/prefix.")
]
InputOpt = Annotated[list[str] | None, typer.Option("--input", "-i", help="Replace the stage's inputs.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the stage's manifest as JSON on stdout.")]

DEFAULT_CONFIG = Path("configs/tiny.yaml")


@app.callback()
def _root() -> None:
    """Options are the same for every subcommand; the recipe defaults to configs/tiny.yaml."""


def _load(config: Path | None, sets: list[str] | None, storage: str | None):
    from flows.local_api import wait_ready
    from tasks.config import load_config

    path = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    cfg = load_config(path, sets or [])
    if storage:
        cfg = cfg.model_copy(update={"storage": storage})
    wait_ready()  # every command loads its recipe right before its first flow run
    return cfg


def _finish(manifest, as_json: bool, summary: list[str]) -> None:
    if as_json:
        sys.stdout.write(manifest.model_dump_json() + "\n")
        return
    from rich.console import Console

    console = Console()
    for line in summary:
        console.print(line)
    console.print(f"[bold]manifest:[/bold] {manifest.url}/manifest.json")


class StageProgress:
    """A rich progress bar over the stages of a flow, with one line per finished stage."""

    def __init__(self, total: int | None):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(stderr=True)
        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.task = self.bar.add_task("starting", total=total)
        self.started: dict[str, float] = {}

    def __call__(self, stage: str, event: str, manifest) -> None:
        import time

        if event == "update" and "task" in manifest:  # evaluation: items of the running benchmark
            self.bar.update(
                self.task,
                description=f"[cyan]{stage}[/cyan] {manifest['task']} {manifest['done']}/{manifest['total']}",
            )
            return
        if event == "update":  # a long stage's own progress, e.g. training steps
            loss = manifest.get("train/loss")
            self.bar.update(
                self.task,
                description=f"[cyan]{stage}[/cyan] step {manifest['step']}/"
                f"{manifest.get('max_steps', '?')}" + (f" loss {loss:.3f}" if loss is not None else ""),
            )
            return
        if event == "start":
            self.started[stage] = time.time()
            self.bar.update(self.task, description=f"[cyan]{stage}[/cyan]")
            return
        seconds = time.time() - self.started.get(stage, time.time())
        reused = manifest.created_at.timestamp() < self.started.get(stage, 0)
        docs = manifest.stats.get("documents")
        what = f"{docs:,} documents" if isinstance(docs, int) else ""
        self.bar.console.print(
            f"  [green]✓[/green] {stage:<12} {what:<15} {seconds:6.1f} s"
            + ("  [dim](reused)[/dim]" if reused else "")
        )
        self.bar.advance(self.task)

    def __enter__(self):
        from tasks import progress

        self.bar.start()
        self._unsubscribe = progress.subscribe(self)
        return self

    def __exit__(self, *exc):
        self._unsubscribe()
        self.bar.stop()


def _run(body, temporary_api: bool = True) -> None:
    """Run a command body; map failures to the documented exit codes. Without a configured Prefect server
    the body's flows report to a temporary one (flows/local_api.py), unless `temporary_api` is off."""
    from contextlib import nullcontext

    from flows.local_api import prefect_api
    from tasks.errors import ForjaInputError

    try:
        with prefect_api() if temporary_api else nullcontext():
            body()
    except ForjaInputError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except typer.Exit:
        raise
    except Exception as e:  # noqa: BLE001 - the last line of defence prints one clear line
        typer.echo(f"failed: {type(e).__name__}: {e}", err=True)
        raise typer.Exit(1) from None


@app.command()
def corpus(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    storage: StorageOpt = None,
    input_: InputOpt = None,
    as_json: JsonOpt = False,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Add only new input to the latest version.")
    ] = False,
) -> None:
    """Collect, clean, deduplicate, detox and measure a corpus."""

    def body():
        from flows.corpus import corpus_flow, corpus_refresh

        cfg = _load(config, set_, storage)
        flow = corpus_refresh if refresh else corpus_flow
        with StageProgress(total=5):
            m = flow(cfg.corpus, cfg.storage, input_ or None)
        s = m.stats
        langs = ", ".join(f"{k} {100 * v['share_of_tokens']:.0f} %" for k, v in s["languages"].items())
        funnel = " -> ".join(f"{r['stage']} {r['documents_out']:,}" for r in s["funnel"])
        _finish(
            m,
            as_json,
            [
                f"[bold green]corpus[/bold green]: {s['documents']:,} documents, "
                f"~{s['tokens_estimate']:,} tokens, estimated {s['estimated_size']} ({langs})",
                f"funnel: {funnel}",
                f"report: {m.url}/report.md",
            ],
        )

    _run(body)


def _pipeline(config, set_, storage, input_, as_json, until: str | None) -> None:
    """Run the pipeline up to a stage (earlier stages are cached) and print its summary."""

    def body():
        from flows.pipeline import pipeline

        cfg = _load(config, set_, storage)
        if input_:
            cfg.corpus.collect.inputs = list(input_)
        stages = {"tokenizer": 8, "pretrain": 9, None: 15}  # stages + the report card
        with StageProgress(total=stages[until]):
            results = pipeline(cfg, until=until)
        last = {"tokenizer": "shards", "pretrain": "pretrain", None: "report"}[until]
        _finish(results[last], as_json, _pipeline_summary(results))

    _run(body)


def _pipeline_command(name: str, until: str | None, doc: str) -> None:
    """`forja run`, `forja tokenizer`, `forja pretrain`: the pipeline up to a stage."""

    def command(
        config: ConfigOpt = None,
        set_: SetOpt = None,
        storage: StorageOpt = None,
        input_: InputOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        _pipeline(config, set_, storage, input_, as_json, until)

    command.__doc__ = doc
    app.command(name)(command)


_pipeline_command("run", None, "Run the whole pipeline on the recipe (default: the bundled sample, on CPU).")
_pipeline_command(
    "tokenizer",
    "tokenizer",
    "Train the tokenizer on the corpus (built first if needed) and tokenize it into shards.",
)
_pipeline_command(
    "pretrain",
    "pretrain",
    "Pretrain the decoder on the token shards (earlier stages run first if needed, cached).",
)


@app.command()
def sft(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    storage: StorageOpt = None,
    input_: InputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune with LoRA on chat data (--input: chat or instruction files and folders).

    The base is `sft.base` (a pretrain or sft stage folder) or the recipe's pretrained model (earlier
    stages run first if needed, cached).
    """

    def body():
        from flows.finetune import sft_flow
        from tasks.posttrain import manifest_at

        cfg = _load(config, set_, storage)
        with StageProgress(total=1 if cfg.sft.base else 10):
            if cfg.sft.base:
                base = manifest_at(cfg.sft.base, "sft.base")
            else:
                from flows.pipeline import pipeline

                base = pipeline(cfg, until="pretrain")["pretrain"]
            m = sft_flow(cfg.sft, cfg.storage, base, list(input_) if input_ else None)
        s, data = m.stats, m.stats["data"]
        skipped = sum(data["skipped"].values())
        loss = f"{s['val_loss_start']:.3f} -> {s['val_loss']:.3f}" if s.get("val_loss") is not None else "n/a"
        _finish(
            m,
            as_json,
            [
                f"[bold green]sft[/bold green]: answer-token val loss {loss} after {s['steps']} steps; "
                f"{data['train']['examples']:,} conversations ({skipped} skipped: {m.url}/data/skipped.json)",
                f"adapter (peft): {s['adapter']}; merged transformers export: {s['export']}",
            ],
        )

    _run(body)


def _tuned_model(cfg, stage_folder: str | None, setting: str):
    """The model a post-training command starts from: the stage folder in `setting`, else the recipe's SFT
    model (earlier stages run first if needed, cached)."""
    from tasks.posttrain import manifest_at

    if stage_folder:
        return manifest_at(stage_folder, setting)
    from flows.finetune import sft_flow
    from flows.pipeline import pipeline

    return sft_flow(cfg.sft, cfg.storage, pipeline(cfg, until="pretrain")["pretrain"])


@app.command()
def dpo(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    storage: StorageOpt = None,
    input_: InputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Preference tuning: DPO and a reward model on preference pairs (--input: pair files and folders).

    The base is `dpo.base` (an sft, pretrain or dpo stage folder) or the recipe's SFT model. --json prints
    one manifest per line: DPO's, then the reward model's.
    """

    def body():
        from flows.align import dpo_flow

        cfg = _load(config, set_, storage)
        stages = 1 + cfg.reward_model.enabled
        with StageProgress(total=stages if cfg.dpo.base else 10 + stages):
            base = _tuned_model(cfg, cfg.dpo.base, "dpo.base")
            results = dpo_flow(cfg.dpo, cfg.reward_model, cfg.storage, base, list(input_) if input_ else None)
        if as_json:
            for m in results.values():
                sys.stdout.write(m.model_dump_json() + "\n")
            return
        from rich.console import Console

        console = Console()
        for m in results.values():
            s, data = m.stats, m.stats["data"]
            skipped = sum(data["skipped"].values())
            held_out = "no held-out pairs (dpo.val_fraction=0)"
            if s.get("val_accuracy") is not None:
                held_out = f"held-out accuracy {s['val_accuracy']:.3f}, reward margin {s['val_margin']:.3f}"
            console.print(
                f"[bold green]{m.stage}[/bold green]: {held_out} after {s['steps']} steps; "
                f"{data['train']['pairs']:,} pairs ({skipped} skipped: {m.url}/data/skipped.json); "
                f"curves {s['curves']}"
            )
            console.print(f"  [bold]manifest:[/bold] {m.url}/manifest.json")
        if "reward_model" in results:
            url = results["reward_model"].url
            console.print(f"reward function: models.reward.load_reward_model('{url}')")

    _run(body)


@app.command()
def feedback(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    storage: StorageOpt = None,
    input_: InputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Human feedback: two answers per prompt (--input: prompt files), a choice per question in the UI.

    The run pauses at each question; answer it in the Prefect UI (the flow run's Resume form). Needs a
    Prefect server the annotators can open: PREFECT_API_URL. The model is `feedback.model` (a stage
    folder) or the recipe's SFT model; choices go to <storage>/feedback/<feedback.collection>/pairs.jsonl.
    """

    def body():
        import json

        from prefect.settings import PREFECT_API_URL

        from tasks.errors import ForjaInputError

        if not PREFECT_API_URL.value():  # a temporary server has no UI anyone could answer in
            raise ForjaInputError(
                "forja feedback waits for answers in the Prefect UI: start a server (prefect server start) "
                "and export PREFECT_API_URL=http://127.0.0.1:4200/api"
            )
        from flows.feedback import feedback_flow

        cfg = _load(config, set_, storage)
        with StageProgress(total=1 if cfg.feedback.model else 11):
            model = _tuned_model(cfg, cfg.feedback.model, "feedback.model")
            summary = feedback_flow(cfg.feedback, cfg.storage, model, list(input_) if input_ else None)
        if as_json:
            sys.stdout.write(json.dumps(summary, ensure_ascii=False) + "\n")
            return
        from rich.console import Console

        c = summary["choices"]
        Console().print(
            f"[bold green]feedback[/bold green]: {summary['answered']} of {summary['asked']} questions "
            f"answered (A {c.get('A', 0)}, B {c.get('B', 0)}, tie {c.get('tie', 0)}); "
            f"{summary['pairs']} preference pairs in {summary['url']}"
        )

    _run(body, temporary_api=False)


@app.command()
def rl(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    storage: StorageOpt = None,
    input_: InputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """RL with verifiable rewards (GRPO) on prompts with answers (--input: prompt files and folders).

    The base is `rl.base` (an sft, dpo or pretrain stage folder) or the recipe's SFT model; rewards are
    `rl.rewards` (answer, format, reward_model, or your own function).
    """

    def body():
        from flows.rl import rl_flow

        cfg = _load(config, set_, storage)
        with StageProgress(total=1 if cfg.rl.base else 11):
            base = _tuned_model(cfg, cfg.rl.base, "rl.base")
            m = rl_flow(cfg.rl, cfg.storage, base, list(input_) if input_ else None)
        s, data = m.stats, m.stats["data"]
        skipped = sum(data["skipped"].values())
        held_out = "no held-out prompts (rl.val_fraction=0)"
        if s.get("val_reward") is not None:
            held_out = f"held-out reward {s['val_reward_start']:.3f} -> {s['val_reward']:.3f}"
            if s.get("val_accuracy") is not None:
                held_out += f", accuracy {s['val_accuracy_start']:.3f} -> {s['val_accuracy']:.3f}"
        _finish(
            m,
            as_json,
            [
                f"[bold green]rl[/bold green]: {held_out} after {s['steps']} steps; "
                f"{data['train']['prompts']:,} prompts ({skipped} skipped: {m.url}/data/skipped.json)",
                f"curves {s['curves']}; adapter (peft): {s['adapter']}; "
                f"merged transformers export: {s['export']}",
            ],
        )

    _run(body)


LimitOpt = Annotated[
    int | None, typer.Option("--limit", help="At most N items per benchmark (a quick run); eval.limit.")
]


@app.command("eval")
def eval_(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    storage: StorageOpt = None,
    input_: InputOpt = None,
    as_json: JsonOpt = False,
    limit: LimitOpt = None,
) -> None:
    """Evaluate models: bits per byte, HellaSwag, GSM8K / MGSM (en, es) and greedy samples.

    --input: transformers model folders, stage folders or manifest.json files, training checkpoints
    (repeatable: one evaluation each, side by side). Without it, the recipe's pretrained model (earlier
    stages run first if needed, cached).
    """

    def body():
        from tasks.eval.source import check as check_model

        sets = [*(set_ or []), *([f"eval.limit={limit}"] if limit is not None else [])]
        cfg = _load(config, sets, storage)
        models = list(input_ or [])
        for m in models:  # a mistyped path fails at once, before Prefect or torch start
            check_model(m)
        from flows.eval import eval_flow

        with StageProgress(total=len(models) or None):  # None: as many as the pipeline runs
            if not models:
                from flows.pipeline import pipeline

                models = [pipeline(cfg, until="pretrain")["pretrain"]]
            results = [eval_flow(cfg.eval, cfg.storage, m) for m in models]
        if as_json:
            for m in results:
                sys.stdout.write(m.model_dump_json() + "\n")
            return
        _eval_summary(results)

    _run(body)


def _eval_summary(results: list) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from tasks.eval.steps import result_rows

    console = Console()
    table = Table(title="evaluation")
    table.add_column("task")
    table.add_column("metric")
    columns = [{(r["task"], r["metric"]): r["value"] for r in result_rows(m)} for m in results]
    for m in results:
        who = m.stats["model"]
        name = who["url"].rstrip("/").rsplit("/", 1)[-1] if who["stage"] == "model" else who["stage"]
        table.add_column(f"{name} {who['key'][:8]}\n({who['backend']})", justify="right")
    for task, metric in dict.fromkeys(k for col in columns for k in col):
        cells = [col.get((task, metric)) for col in columns]
        table.add_row(task, metric, *("-" if v is None else f"{v:.4f}" for v in cells))
    console.print(table)
    for m in results:
        for sample in m.stats["samples"]:
            console.print(
                f"  [dim]{escape(sample['prompt'])}[/dim] {escape(repr(sample['completion'][:120]))}"
            )
        console.print(
            f"[bold]results:[/bold] {m.url}/eval.json  [bold]manifest:[/bold] {m.url}/manifest.json"
        )


def _pipeline_summary(results: dict) -> list[str]:
    lines = []
    if corpus := results.get("corpus"):
        lines.append(
            f"[bold green]corpus[/bold green]: {corpus.stats['documents']:,} documents, "
            f"report {corpus.url}/report.md"
        )
    if tok := results.get("tokenizer"):
        heldout = ", ".join(f"{k} {v['bytes_per_token']} B/token" for k, v in tok.stats["heldout"].items())
        lines.append(
            f"[bold green]tokenizer[/bold green]: {tok.stats['model_type']} {tok.stats['vocab_size']:,} "
            f"pieces ({heldout}); transformers files in {tok.url}/hf"
        )
    if shards := results.get("shards"):
        totals = shards.stats["totals"]
        lines.append(
            f"[bold green]shards[/bold green]: {shards.stats['tokens']:,} tokens "
            f"(train {totals['train']['tokens']:,}, val {totals['val']['tokens']:,})"
        )
    if pre := results.get("pretrain"):
        s = pre.stats
        lines.append(
            f"[bold green]pretrain[/bold green]: val loss {s['val_loss']:.3f} after {s['steps']} steps; "
            f"loss curve {pre.url}/loss.png; transformers export {s['export']}"
        )
    for name in ("eval", "sft", "dpo", "reward_model", "rl", "final_eval"):
        if m := results.get(name):
            lines.append(f"[bold green]{name}[/bold green]: {_headline(m.stats)}; {m.url}")
    if report := results.get("report"):
        lines.append(f"[bold green]report card[/bold green]: {report.stats['report']}")
    return lines


def _headline(stats: dict) -> str:
    """The numbers a post-training or eval stage is judged by, as far as its stats have them."""
    if "results" in stats:  # eval
        from tasks.eval.steps import headline

        shown = [(task, headline(task, r)) for task, r in stats["results"].items()]
        return ", ".join(h if h.startswith(task) else f"{task} {h}" for task, h in shown)
    shown = []
    for name in ("val_loss", "val_accuracy", "val_margin", "val_reward"):
        if stats.get(name) is not None:
            start = stats.get(f"{name}_start")
            before = f"{start:.3f} -> " if isinstance(start, int | float) else ""
            shown.append(f"{name.removeprefix('val_')} {before}{stats[name]:.3f}")
    return ", ".join(shown) or "done"


def main() -> None:
    app()


if __name__ == "__main__":
    main()

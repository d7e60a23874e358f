"""The human feedback flow: sample two answers per prompt, pause for a person's choice in the Prefect UI.

Each question pauses the flow run with a typed form (tasks.feedback.PreferenceForm) whose description shows
the prompt and both answers; the run resumes when someone submits it in the UI (or through the API:
`prefect.flow_runs.resume_flow_run(flow_run_id, run_input={...})`). Choices are appended to
`<storage>/feedback/<collection>/pairs.jsonl` one batch at a time; answered questions are not asked again.
"""

from __future__ import annotations

from collections import Counter

from prefect import flow, get_run_logger
from prefect.flow_runs import pause_flow_run

from tasks.config import FeedbackConfig
from tasks.errors import ForjaInputError
from tasks.feedback import PairLog, choice_record, pending_questions, question_form, read_candidates
from tasks.feedback_steps import candidates_task, publish_session
from tasks.manifest import Manifest
from tasks.posttrain import manifest_at
from tasks.storage import Storage


def run_page(flow_run_id: str) -> str:
    from prefect.settings import PREFECT_UI_URL

    ui = PREFECT_UI_URL.value()
    return f"{ui}/runs/flow-run/{flow_run_id}" if ui else f"flow run {flow_run_id}"


@flow(name="feedback", log_prints=True)
def feedback_flow(
    config: FeedbackConfig | None = None,
    storage: str = "./forja-store",
    model: Manifest | None = None,
    prompts: list[str] | None = None,
) -> dict:
    """Ask for a choice between two answers of `model` (a stage manifest; default: the stage folder in
    `config.model`) to each prompt of `config.prompts` (or `prompts`). Returns the session's tally."""
    from prefect.runtime import flow_run

    config = config or FeedbackConfig()
    if model is None:
        if not config.model:
            raise ForjaInputError("no model to ask: pass a model manifest or set feedback.model")
        model = manifest_at(config.model, "feedback.model")
    root = Storage(storage)
    cands = candidates_task(root, config, model, prompts)
    log = PairLog(root, config.collection)
    todo = pending_questions(read_candidates(root, cands), log, config)
    lineage = {
        "model": {"stage": model.stage, "key": model.key, "url": model.url},
        "candidates": cands.key,
        "flow_run": str(flow_run.id),
    }
    logger = get_run_logger()
    if todo:
        logger.info("%d questions: answer them in the UI at %s", len(todo), run_page(flow_run.id))
    choices: Counter[str] = Counter()
    try:
        for number, candidate in enumerate(todo, 1):
            answer = pause_flow_run(
                wait_for_input=question_form(candidate, number, len(todo), config),
                timeout=config.timeout_s,
                poll_interval=config.poll_s,
                key=f"question-{candidate['id']}",
            )
            log.add(choice_record(candidate, answer, config.seed, lineage), config.batch_size)
            choices[answer.choice] += 1
            if answer.stop:
                break
    finally:
        log.flush()  # what was answered is kept, also when a question times out
    records = log.records()
    summary = {
        "collection": config.collection,
        "url": log.url,
        "asked": len(todo),
        "answered": sum(choices.values()),
        "choices": dict(choices),
        "total": len(records),
        "pairs": sum(r.get("choice") != "tie" for r in records),
        "model": model.url,
        "candidates": cands.url,
    }
    publish_session(summary)
    return summary

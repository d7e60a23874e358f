"""Human feedback in Prefect: candidate answers (a cached stage as a task) and the session's tally."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact

from tasks.feedback import candidates
from tasks.prefect_utils import stage_task

candidates_task = stage_task(candidates, "candidates", retries=1)


def publish_session(summary: dict) -> None:
    counts = summary["choices"]
    create_markdown_artifact(
        key="feedback-session",
        markdown=(
            f"# Human feedback: {summary['collection']}\n\n"
            f"{summary['answered']} of {summary['asked']} questions answered this session "
            f"(A {counts.get('A', 0)}, B {counts.get('B', 0)}, tie {counts.get('tie', 0)}); "
            f"the collection holds {summary['total']} choices, {summary['pairs']} of them preference pairs "
            f"(ties are kept but not trained on).\n\nPairs: `{summary['url']}`  \n"
            f"Model: `{summary['model']}`\n"
        ),
        description="Choices collected in this session",
    )

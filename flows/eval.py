"""The evaluation flow: bits per byte, HellaSwag, GSM8K / MGSM and samples for one model.

Callable after any stage that exports a model: pass its manifest (pretrain today, fine-tuning stages the
same way), a stage folder, any transformers model folder or a training checkpoint.
"""

from __future__ import annotations

from prefect import flow

from tasks.config import EvalConfig
from tasks.errors import ForjaInputError
from tasks.eval.source import WHAT_TO_PASS
from tasks.eval.steps import eval_task
from tasks.manifest import Manifest
from tasks.storage import Storage


@flow(name="eval", log_prints=True)
def eval_flow(
    config: EvalConfig | None = None,
    storage: str = "./forja-store",
    model: Manifest | str | None = None,
) -> Manifest:
    """Evaluate `model`; results in `<storage>/eval/<key>/eval.json` and as tables in the UI."""
    if model is None or model == "":
        raise ForjaInputError(f"eval needs a model: {WHAT_TO_PASS}")
    return eval_task(Storage(storage), config or EvalConfig(), model)

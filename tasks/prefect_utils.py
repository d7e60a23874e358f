"""The thin Prefect edge of every stage: retries for transient faults only, and artifacts."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NONE

from tasks import progress
from tasks.errors import is_transient


def _retry_transient(_task: Task, _run: Any, state: Any) -> bool:
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - classifying the failure is the point
        return is_transient(exc)
    return False


def stage_task(fn: Callable, name: str, retries: int = 2) -> Task:
    """A Prefect task around a stage function.

    The stage's manifest is its cache (content keys, found in the storage root by any process or machine),
    so Prefect's own result cache is off: a rerun calls the function, which returns the manifest at once.
    """

    @functools.wraps(fn)
    def run(*args, **kwargs):
        progress.emit(name, "start")
        manifest = fn(*args, **kwargs)
        progress.emit(name, "done", manifest)
        return manifest

    return task(
        run,
        name=name,
        retries=retries,
        retry_delay_seconds=[2, 10, 30][:retries],
        retry_condition_fn=_retry_transient,
        cache_policy=NONE,
        persist_result=False,
    )

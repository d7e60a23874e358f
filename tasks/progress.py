"""Stage start/finish events, for whoever shows progress (the `forja` command draws them with rich)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Listener = Callable[[str, str, Any], None]  # (stage, "start" | "done", manifest or None)
_listeners: list[Listener] = []


def subscribe(listener: Listener) -> Callable[[], None]:
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def emit(stage: str, event: str, manifest: Any = None) -> None:
    for listener in list(_listeners):
        listener(stage, event, manifest)

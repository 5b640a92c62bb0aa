"""Stopping the background tasks a component owns: one way, used by every component."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("pointsman.tasks")


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel our own tasks and wait until they have ended. Their CancelledErrors are the
    expected outcome and dropped; an error a task ended with is logged; a cancellation of the
    caller itself still propagates (gather raises it)."""
    owned = [task for task in tasks if task is not None]
    for task in owned:
        task.cancel()
    results = await asyncio.gather(*owned, return_exceptions=True)
    for task, result in zip(owned, results, strict=True):
        if isinstance(result, Exception):
            log.error("task %s ended with an error", task.get_name(), exc_info=result)

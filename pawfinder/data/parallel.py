"""Run one picklable function over many items in worker processes, with an optional rich progress bar."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
R = TypeVar("R")

#: Below this many items the work runs in-process: starting workers would cost more than it saves.
MIN_ITEMS_FOR_POOL = 32


def resolve_workers(workers: int) -> int:
    """``settings.workers`` semantics: 0 means one worker per CPU."""
    return workers if workers > 0 else (os.cpu_count() or 1)


def progress_bar(*, enabled: bool = True) -> Progress:
    """The progress bar used by data commands (on stderr, so ``--json`` output on stdout stays clean)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def parallel_map(
    fn: Callable[[T], R], items: Sequence[T], *, workers: int, description: str = "", show_progress: bool = False
) -> Iterator[R]:
    """Yield ``fn(item)`` for every item, in order. ``fn`` must be a module-level function (it is pickled).

    Uses a ``forkserver`` process pool (safe next to threads, e.g. an in-process Ray or MLflow client) when
    ``workers`` > 1 and there are at least ``MIN_ITEMS_FOR_POOL`` items.
    """
    count = resolve_workers(workers)
    with progress_bar(enabled=show_progress) as progress:
        task = progress.add_task(description, total=len(items))
        if count == 1 or len(items) < MIN_ITEMS_FOR_POOL:
            for item in items:
                yield fn(item)
                progress.advance(task)
            return
        chunksize = max(1, min(64, len(items) // (count * 8)))
        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(max_workers=count, mp_context=context) as pool:
            for result in pool.map(fn, items, chunksize=chunksize):
                yield result
                progress.advance(task)

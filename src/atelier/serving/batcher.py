"""Adaptive micro-batching for the KServe runtime: concurrent requests share one forward pass.

Each request is ``submit``-ted from the event loop. One batch runs at a time, on the
executor the batcher is given (the runtime's one inference thread), and a batch is
whatever is waiting, up to ``max_batch_size`` requests:

- a request that finds the batcher idle runs at once, alone: no fixed wait, so a lone
  client sees no batching delay;
- requests that arrive while a batch runs queue up, and the next batch takes them all (up
  to the size) as soon as the running one is done: the busier the server, the bigger the
  batches, with no timer involved;
- with ``max_batch_delay_ms`` > 0 (TorchServe's ``maxBatchDelay``), a batch of requests
  that queued behind a running batch is held open until it is full or until its oldest
  request has waited that long, whichever comes first. A request that found the batcher
  idle is never held.

The batch function gets the items and returns one result per item, in order; per-item
errors are results (an ``Outcome`` with its own status), so one bad request never fails
the others. If the function itself raises, every request of that batch gets the exception.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from atelier.runtime.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatchPolicy:
    """How big a batch may get and how long a queued batch may be held open to fill up."""

    max_batch_size: int = 8
    max_batch_delay_ms: int = 0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.max_batch_delay_ms < 0:
            raise ValueError(f"max_batch_delay_ms must be >= 0, got {self.max_batch_delay_ms}")


@dataclass
class _Entry(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    arrived: float
    queued: bool  # arrived while a batch was running: it may be held for the delay


class MicroBatcher(Generic[T, R]):
    """Queue items from the event loop; run them in batches on ``executor``."""

    def __init__(
        self,
        run: Callable[[list[T]], list[R]],
        policy: BatchPolicy,
        executor: Executor | None = None,
    ) -> None:
        self._run = run
        self.policy = policy
        self._executor = executor
        self._pending: deque[_Entry[T, R]] = deque()
        self._draining = False  # a drain task is running (a batch runs or is being formed)
        self._full: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None  # the drain task (kept referenced)

    @property
    def pending(self) -> int:
        """Requests queued and not yet in a running batch."""
        return len(self._pending)

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        entry: _Entry[T, R] = _Entry(item, loop.create_future(), time.monotonic(), self._draining)
        self._pending.append(entry)
        if not self._draining:
            self._draining = True
            self._task = loop.create_task(self._drain())
        elif self._full is not None and len(self._pending) >= self.policy.max_batch_size:
            self._full.set()
        return await entry.future

    async def _drain(self) -> None:
        try:
            while self._pending:
                await self._hold()
                batch: list[_Entry[T, R]] = []
                while self._pending and len(batch) < self.policy.max_batch_size:
                    entry = self._pending.popleft()
                    if not entry.future.done():  # a cancelled request is not run
                        batch.append(entry)
                if batch:
                    await self._run_batch(batch)
        except BaseException:  # cancelled (the loop is closing): nobody waits forever
            for entry in self._pending:
                entry.future.cancel()
            self._pending.clear()
            raise
        finally:
            self._draining = False
            self._task = None

    async def _hold(self) -> None:
        """Hold a batch of queued requests open until it is full or its oldest has waited
        ``max_batch_delay_ms``; never a request that found the batcher idle."""
        delay = self.policy.max_batch_delay_ms / 1000
        oldest = self._pending[0]
        if not delay or not oldest.queued or len(self._pending) >= self.policy.max_batch_size:
            return
        remaining = oldest.arrived + delay - time.monotonic()
        if remaining <= 0:
            return
        self._full = asyncio.Event()
        try:
            await asyncio.wait_for(self._full.wait(), remaining)
        except TimeoutError:
            pass
        finally:
            self._full = None

    async def _run_batch(self, batch: list[_Entry[T, R]]) -> None:
        loop = asyncio.get_running_loop()
        items = [entry.item for entry in batch]
        try:
            results = await loop.run_in_executor(self._executor, self._run, items)
            if len(results) != len(batch):
                raise RuntimeError(f"the batch function gave {len(results)} results for "
                                   f"{len(batch)} items")  # fmt: skip
        except Exception as exc:
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            return
        except BaseException:
            for entry in batch:
                entry.future.cancel()
            raise
        for entry, result in zip(batch, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)


# --- Where the batch settings come from: the model's entry in TorchServe's config


def torchserve_batching(config_file: Path, model_name: str) -> dict[str, int]:
    """``batch_size`` and ``max_batch_delay_ms`` from the ``model_snapshot`` line of a
    TorchServe config.properties (what `atelier archive` writes, and what TorchServe reads
    for this model): the entry of the default version, or of the only one. Empty when the
    file does not exist; a ConfigError naming the file when it cannot be read."""
    if not config_file.is_file():
        return {}
    snapshot: Any = None
    try:
        for line in config_file.read_text().splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key.strip() == "model_snapshot":
                snapshot = json.loads(value)
        if snapshot is None:
            return {}
        versions = snapshot["models"][model_name]
        entries = list(versions.values())
        entry = next((e for e in entries if e.get("defaultVersion")), None)
        if entry is None and len(entries) == 1:
            entry = entries[0]
        if entry is None:
            raise KeyError("defaultVersion")
        found = {"batch_size": entry["batchSize"], "max_batch_delay_ms": entry["maxBatchDelay"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"{config_file}: no batchSize/maxBatchDelay for model {model_name} in its "
            f"model_snapshot ({type(exc).__name__}: {exc})",
            hint="re-run atelier archive, or pass --batch-size and --max-batch-delay-ms",
        ) from exc
    for key, value in found.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{config_file}: model {model_name}: {key} {value!r} is not a whole "
                              "number")  # fmt: skip
    return found

"""Tests for atelier.serving.batcher: which requests share a batch, and who gets which answer.

The batch function runs on a real one-thread executor and blocks on a gate the test opens,
so "a batch is running" is a state the test controls, not a matter of timing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from atelier.runtime.errors import ConfigError
from atelier.serving.batcher import BatchPolicy, MicroBatcher, torchserve_batching
from atelier.training.archive import CONFIG_TEMPLATE, render_config
from atelier.training.config import ArchiveDefaults

pytestmark = pytest.mark.unit


class Gated:
    """A batch function that records its batches and waits for the test to let it finish."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        assert self.gate.wait(30), "the test never opened the gate"
        if self.fail_on in items:
            raise RuntimeError(f"batch with {self.fail_on} failed")
        return [i * 10 for i in items]


async def until(check: Callable[[], bool]) -> None:
    for _ in range(3000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


def run(test: Callable[[ThreadPoolExecutor], Awaitable[None]]) -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:
        asyncio.run(test(pool))


def test_a_lone_request_runs_at_once_and_those_queued_behind_it_share_the_next_batch() -> None:
    async def body(pool: ThreadPoolExecutor) -> None:
        fn = Gated()
        batcher = MicroBatcher(fn, BatchPolicy(max_batch_size=8, max_batch_delay_ms=0), pool)
        first = asyncio.create_task(batcher.submit(1))
        await until(lambda: fn.batches == [[1]])
        queued = [asyncio.create_task(batcher.submit(i)) for i in (2, 3, 4)]
        await until(lambda: batcher.pending == 3)
        fn.gate.set()
        assert await first == 10
        assert [await t for t in queued] == [20, 30, 40]
        assert fn.batches == [[1], [2, 3, 4]]

    run(body)


def test_idle_requests_are_never_held_by_the_delay() -> None:
    async def body(pool: ThreadPoolExecutor) -> None:
        fn = Gated()
        fn.gate.set()
        batcher = MicroBatcher(fn, BatchPolicy(max_batch_size=8, max_batch_delay_ms=60_000), pool)
        # One at a time, each to an idle batcher: each runs alone, well before 60 s.
        for i in range(3):
            assert await asyncio.wait_for(batcher.submit(i), 30) == i * 10
        assert fn.batches == [[0], [1], [2]]

    run(body)


def test_batches_are_capped_at_the_batch_size() -> None:
    async def body(pool: ThreadPoolExecutor) -> None:
        fn = Gated()
        batcher = MicroBatcher(fn, BatchPolicy(max_batch_size=2), pool)
        tasks = [asyncio.create_task(batcher.submit(1))]
        await until(lambda: fn.batches == [[1]])
        tasks += [asyncio.create_task(batcher.submit(i)) for i in (2, 3, 4, 5, 6)]
        await until(lambda: batcher.pending == 5)
        fn.gate.set()
        assert [await t for t in tasks] == [10, 20, 30, 40, 50, 60]
        assert fn.batches == [[1], [2, 3], [4, 5], [6]]

    run(body)


def test_the_delay_holds_a_queued_batch_open_until_it_is_full() -> None:
    async def body(pool: ThreadPoolExecutor) -> None:
        fn = Gated()
        batcher = MicroBatcher(fn, BatchPolicy(max_batch_size=3, max_batch_delay_ms=60_000), pool)
        first = asyncio.create_task(batcher.submit(1))
        await until(lambda: fn.batches == [[1]])
        second = asyncio.create_task(batcher.submit(2))
        await until(lambda: batcher.pending == 1)
        fn.gate.set()
        assert await first == 10
        await asyncio.sleep(0.2)
        # Without the delay, 2 would have run alone as soon as 1 was done.
        assert fn.batches == [[1]] and batcher.pending == 1
        more = [asyncio.create_task(batcher.submit(i)) for i in (3, 4)]
        assert [await second, *[await t for t in more]] == [20, 30, 40]
        assert fn.batches == [[1], [2, 3, 4]]

    run(body)


def test_a_held_batch_runs_when_its_oldest_request_has_waited_the_delay() -> None:
    async def body(pool: ThreadPoolExecutor) -> None:
        fn = Gated()
        batcher = MicroBatcher(fn, BatchPolicy(max_batch_size=8, max_batch_delay_ms=50), pool)
        first = asyncio.create_task(batcher.submit(1))
        await until(lambda: fn.batches == [[1]])
        second = asyncio.create_task(batcher.submit(2))
        await until(lambda: batcher.pending == 1)
        fn.gate.set()
        assert await first == 10
        assert await asyncio.wait_for(second, 30) == 20  # not full, run after the delay
        assert fn.batches == [[1], [2]]

    run(body)


def test_a_failing_batch_fails_its_own_requests_only() -> None:
    async def body(pool: ThreadPoolExecutor) -> None:
        fn = Gated(fail_on=3)
        batcher = MicroBatcher(fn, BatchPolicy(max_batch_size=8), pool)
        first = asyncio.create_task(batcher.submit(1))
        await until(lambda: fn.batches == [[1]])
        doomed = [asyncio.create_task(batcher.submit(i)) for i in (2, 3)]
        await until(lambda: batcher.pending == 2)
        fn.gate.set()
        assert await first == 10
        for task in doomed:
            with pytest.raises(RuntimeError, match="batch with 3 failed"):
                await task
        assert await batcher.submit(4) == 40  # the batcher goes on
        assert fn.batches == [[1], [2, 3], [4]]

    run(body)


def test_a_cancelled_request_is_left_out_of_its_batch() -> None:
    async def body(pool: ThreadPoolExecutor) -> None:
        fn = Gated()
        batcher = MicroBatcher(fn, BatchPolicy(max_batch_size=8), pool)
        first = asyncio.create_task(batcher.submit(1))
        await until(lambda: fn.batches == [[1]])
        gone, kept = (asyncio.create_task(batcher.submit(i)) for i in (2, 3))
        await until(lambda: batcher.pending == 2)
        gone.cancel()
        fn.gate.set()
        assert (await first, await kept) == (10, 30)
        assert gone.cancelled()
        assert fn.batches == [[1], [3]]

    run(body)


@pytest.mark.parametrize(
    ("size", "delay"), [(0, 0), (8, -1)], ids=["size below 1", "negative delay"]
)
def test_a_bad_policy_is_refused(size: int, delay: int) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        BatchPolicy(size, delay)


# --- the batch settings TorchServe reads for the model ------------------------------------


def config_file(tmp_path: Path, **serving: int) -> Path:
    path = tmp_path / "config.properties"
    path.write_text(render_config(CONFIG_TEMPLATE, "m", "3", ArchiveDefaults(**serving)))
    return path


def test_the_batch_settings_come_from_the_model_entry_atelier_archive_writes(
    tmp_path: Path,
) -> None:
    path = config_file(tmp_path, batch_size=16, max_batch_delay_ms=7)
    assert torchserve_batching(path, "m") == {"batch_size": 16, "max_batch_delay_ms": 7}


def test_no_config_file_means_no_settings(tmp_path: Path) -> None:
    assert torchserve_batching(tmp_path / "nothing.properties", "m") == {}


def test_a_config_without_the_model_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    with pytest.raises(ConfigError, match=r"config\.properties: no batchSize/maxBatchDelay"):
        torchserve_batching(path, "other")

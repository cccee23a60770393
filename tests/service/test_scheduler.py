"""The scheduling policy and the byte-budget LRU, without a model."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from service.engine.encoding import EncodedTexts
from service.engine.lru import ByteBudgetLru
from service.engine.scheduler import Batch, TaskQueues, Waiting, WorkItem, choose_task
from service.errors import EngineStopped


def item(task: Any, inputs: int = 1) -> WorkItem:
    encoded = EncodedTexts([{"input_ids": [1]}] * inputs, [False] * inputs)
    return WorkItem(task, encoded)


def queues(**overrides: Any) -> TaskQueues:
    options = {"max_batch_inputs": 4, "max_wait_s": 0.0, "max_consecutive": 2, "one_request_per_batch": False}
    return TaskQueues(**(options | overrides))


def next_batch(q: TaskQueues) -> Batch:
    job = q.next_job()
    assert isinstance(job, Batch)
    return job


def test_choose_task_prefers_the_fullest_batch_but_keeps_the_applied_task_while_it_is_half_as_full() -> None:
    a, b, c = "a", "b", "c"
    waiting = {a: Waiting(oldest=5.0, inputs=8), b: Waiting(oldest=1.0, inputs=16), c: Waiting(oldest=2.0, inputs=4)}
    assert choose_task(waiting, current=a, passed_over=0, max_consecutive=3) == a  # 8 >= 16 / 2: no swap
    assert choose_task(waiting, current=c, passed_over=0, max_consecutive=3) == b  # 4 < 16 / 2: the fullest
    assert choose_task(waiting, current=None, passed_over=0, max_consecutive=3) == b
    ties = {a: Waiting(oldest=5.0, inputs=4), b: Waiting(oldest=1.0, inputs=4)}
    assert choose_task(ties, current=None, passed_over=0, max_consecutive=3) == b  # tie: the longest waiting


def test_choose_task_serves_the_longest_waiting_request_after_max_consecutive_passes() -> None:
    waiting = {"hot": Waiting(oldest=5.0, inputs=32), "cold": Waiting(oldest=1.0, inputs=1)}
    assert choose_task(waiting, current="hot", passed_over=2, max_consecutive=3) == "hot"
    assert choose_task(waiting, current="hot", passed_over=3, max_consecutive=3) == "cold"


def test_mixed_queues_make_full_batches_rather_than_following_the_applied_task() -> None:
    q = queues(max_batch_inputs=4, max_consecutive=10)
    for task in ["a", "b", "b", "b", "b", "a"]:
        q.submit(item(task))
    assert next_batch(q).staged == "b"  # 4 inputs against a's 2
    assert next_batch(q).inputs == 2  # then a's two


def test_batches_group_one_task_up_to_the_input_budget() -> None:
    q = queues()
    for task, inputs in [("a", 1), ("b", 1), ("a", 2), ("a", 2), ("b", 3)]:
        q.submit(item(task, inputs))
    first = next_batch(q)
    assert first.staged == "b" and [i.size for i in first.items] == [1, 3]  # 4 inputs, a's batch would hold 3
    second = next_batch(q)
    assert second.staged == "a" and [i.size for i in second.items] == [1, 2]  # the next (2) would exceed 4
    third = next_batch(q)
    assert third.staged == "a" and third.inputs == 2


def test_a_skewed_load_does_not_starve_the_other_task() -> None:
    q = queues(max_batch_inputs=1, max_consecutive=2)
    for _ in range(3):
        q.submit(item("hot"))
    q.submit(item("cold"))
    for _ in range(20):
        q.submit(item("hot"))
    order = [next_batch(q).staged for _ in range(7)]
    # three older hot requests first; then two batches may go ahead of cold's request, no more
    assert order == ["hot", "hot", "hot", "hot", "hot", "cold", "hot"]


def test_an_oversized_request_is_a_batch_of_its_own() -> None:
    q = queues(max_batch_inputs=2)
    q.submit(item("a", 5))
    q.submit(item("a", 1))
    assert next_batch(q).inputs == 5
    assert next_batch(q).inputs == 1


def test_swap_per_request_mode_takes_one_request_per_batch() -> None:
    q = queues(one_request_per_batch=True)
    q.submit(item("a"))
    q.submit(item("a"))
    assert len(next_batch(q).items) == 1
    assert len(next_batch(q).items) == 1


def test_a_batch_waits_for_more_requests_until_it_is_full_or_the_deadline_passes() -> None:
    q = queues(max_batch_inputs=2, max_wait_s=0.5)
    q.submit(item("a"))
    threading.Timer(0.05, lambda: q.submit(item("a"))).start()
    started = time.monotonic()
    assert next_batch(q).inputs == 2  # filled by the late request
    assert time.monotonic() - started < 0.5  # full: no need to wait for the deadline

    q = queues(max_batch_inputs=2, max_wait_s=0.1)
    q.submit(item("a"))
    started = time.monotonic()
    assert next_batch(q).inputs == 1
    assert time.monotonic() - started >= 0.09


def test_cancelled_requests_are_skipped_and_close_fails_the_rest() -> None:
    q = queues()
    gone, kept, pending = item("a"), item("a"), item("b")
    for work in (gone, kept, pending):
        q.submit(work)
    gone.future.cancel()
    assert next_batch(q).items == [kept]
    q.submit_control(lambda: None)
    assert q.next_job() is not None and q.pending_requests == 1  # control jobs come before batches
    q.close()
    with pytest.raises(EngineStopped):
        pending.future.result(timeout=1)
    assert q.next_job() is None
    with pytest.raises(EngineStopped):
        q.submit(item("a"))


def test_byte_budget_lru_evicts_least_recently_used() -> None:
    cache: ByteBudgetLru[str, int] = ByteBudgetLru(10)
    cache.put("a", 1, 4)
    cache.put("b", 2, 4)
    assert cache.get("a") == 1  # "b" is now the least recently used
    cache.put("c", 3, 4)
    assert "b" not in cache and cache.nbytes == 8 and len(cache) == 2
    cache.put("huge", 4, 50)  # larger than the budget: kept alone
    assert len(cache) == 1 and cache.peek("huge") == 4
    assert cache.pop("huge") == 4 and cache.nbytes == 0
    disabled: ByteBudgetLru[str, int] = ByteBudgetLru(0)
    disabled.put("a", 1, 1)
    assert disabled.get("a") is None

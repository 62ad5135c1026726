"""Dynamic batching of the Recommends that need the worker pool, as Triton's dynamic batcher does.

A Recommend that a candidate list cannot answer (an index or exact search, a user-tower pass) used to
cost one hand-off to the pool each: a thread wake-up, a future resolved back on the event loop, and
a fight for the GIL with the loop, which at 10⁵ items cost several times the 0.2 ms search itself.
Here such requests queue on the event loop and go to the pool together: one pool task answers a
batch (its tower passes as one ONNX Runtime run, its IVF searches as one FAISS call:
Engine.answer_batch), one loop callback resolves every request of it.

When a batch leaves, with ``workers`` the pool's threads (batches in the pool at once, at most):

* at once when no batch is in the pool: a lone request is never held back (nothing to wait for);
* at once when ``max_size`` requests wait and a thread is free;
* ``max_delay`` after the first waiting request arrived, while a thread is free: the most batching
  adds to any request's wait;
* when a batch in the pool comes back, if every thread was busy: the requests that queued behind it
  go together.

Requests wait here, never in the executor's own queue: a batch sent to a busy pool would wait there
as it is while later requests form more small batches behind it (measured at 10⁵ items: mean batch
1.7 that way, against 4.7 with the wait here).

Each request keeps its own deadline and its own errors: one bad or expired request in a batch fails
alone (Engine.answer_batch). Every request's ``queue`` time (arrival to the start of its batch's
work) reaches the ``server-timing`` trailer with its batch's size, and ``observe`` (the Prometheus
histograms) gets both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

# Defaults measured with benchmarks/bench_scale.py --server (docs/benchmarks.md, "Dynamic batching").
DEFAULT_MAX_SIZE = 32
DEFAULT_MAX_DELAY_US = 500


@dataclass(eq=False)
class _Waiting:
    args: tuple
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


class Batcher:
    """Queues calls of ``run(key, [args, ...]) -> [result or exception, ...]`` and runs them in batches
    in ``executor``; calls with different ``key`` (the engine snapshot they were planned on) never
    share a batch.

    Args:
        max_size: requests per batch (1: every request alone, the hand-off per request).
        max_delay_us: the longest a request waits for others while a thread is free.
        workers: batches in ``executor`` at once, at most (its threads).
        observe: called on the event loop with (batch size, [queue seconds per request]).
    """

    def __init__(
        self,
        executor: Executor | None,
        run: Callable[[Any, Sequence[tuple]], Sequence[Any]],
        max_size: int = DEFAULT_MAX_SIZE,
        max_delay_us: int = DEFAULT_MAX_DELAY_US,
        workers: int = 2,
        observe: Callable[[int, list[float]], None] | None = None,
    ):
        if max_size < 1 or max_delay_us < 0 or workers < 1:
            raise ValueError(
                f"batch size and workers must be >= 1 and delay >= 0 (got {max_size}, {workers}, {max_delay_us})"
            )
        self.executor, self.run, self.observe = executor, run, observe
        self.max_size, self.max_delay, self.workers = max_size, max_delay_us / 1e6, workers
        self._waiting: dict[int, tuple[Any, list[_Waiting]]] = {}  # by id(key): the key and its queue
        self._in_flight = 0
        self._timer: asyncio.TimerHandle | None = None

    async def submit(self, key: Any, *args) -> tuple[Any, float, int]:
        """``run``'s result for ``args``, once its batch ran: (result, seconds queued, batch size).

        Raises:
            whatever ``run`` returned for this request as an exception.
        """
        loop = asyncio.get_running_loop()
        w = _Waiting(args, loop.create_future())
        _, queue = self._waiting.setdefault(id(key), (key, []))
        queue.append(w)
        free = self._in_flight < self.workers
        if self._in_flight == 0 or (free and len(queue) >= self.max_size):
            self._flush(loop)
        elif free and self._timer is None:
            self._timer = loop.call_later(self.max_delay, self._flush, loop)
        # Every thread busy: the batch leaves when one comes back (_settle).
        return await w.future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sends the waiting requests to the pool, oldest key first, in batches of at most ``max_size``
        of one key, while a thread is free; the rest wait for the next batch to come back."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting and self._in_flight < self.workers:
            ref = next(iter(self._waiting))
            key, queue = self._waiting[ref]
            batch, rest = queue[: self.max_size], queue[self.max_size :]
            if rest:
                self._waiting[ref] = (key, rest)
            else:
                del self._waiting[ref]
            self._send(loop, key, batch)

    def _send(self, loop: asyncio.AbstractEventLoop, key: Any, batch: list[_Waiting]) -> None:
        self._in_flight += 1

        def work() -> tuple[float, Sequence[Any]]:
            started = time.perf_counter()
            return started, self.run(key, [w.args for w in batch])

        done = loop.run_in_executor(self.executor, work)
        done.add_done_callback(lambda f: self._settle(loop, batch, f))

    def _settle(self, loop: asyncio.AbstractEventLoop, batch: list[_Waiting], done: asyncio.Future) -> None:
        """On the event loop: each request's result or error, then whatever queued meanwhile leaves."""
        self._in_flight -= 1
        err = done.exception() if not done.cancelled() else asyncio.CancelledError()
        if err is None:
            started, results = done.result()
            queued = [max(0.0, started - w.arrived) for w in batch]
            for w, q, r in zip(batch, queued, results):
                if w.future.done():  # the caller went away (cancelled)
                    continue
                if isinstance(r, BaseException):
                    w.future.set_exception(r)
                else:
                    w.future.set_result((r, q, len(batch)))
            if self.observe is not None:
                self.observe(len(batch), queued)
        else:  # run itself failed (it answers per request, so only a bug gets here): every request fails
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(err)
        if self._waiting:
            self._flush(loop)

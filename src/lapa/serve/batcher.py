"""An asyncio micro-batcher: concurrent requests share one batched call of the policy.

Requests wait in a queue. One worker task takes the first, then collects more until it holds `max_batch`
or `max_wait_ms` have passed since it took the first (0: only what is already queued). It waits only
while more requests are on their way (`incoming`: the app counts those being read and decoded), so a lone
client pays no waiting time. The batched call runs in the batcher's own single thread: the event loop
keeps accepting and decoding requests meanwhile, and the policy is never called from two threads at once
(a stateful policy needs no lock). While one batch runs, the next fills up in the queue, so under load
batches grow even with max_wait_ms=0.

A failing policy call fails the requests of that batch only (each gets a `PolicyError`); the worker
lives on. A full queue refuses new requests with `Overloaded` instead of letting latency grow unbounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

# fn(images: list of uint8 [H, W, 3], instructions: list of str) -> float32 [B, 7]
BatchFn = Callable[[Sequence[np.ndarray], Sequence[str]], np.ndarray]
ACTION_DIM = 7


class PolicyError(RuntimeError):
    """The policy failed on (or returned nonsense for) a batch of valid requests."""


class Overloaded(RuntimeError):
    """The queue is full: the client should retry later."""


@dataclass
class BatchStats:
    requests: int = 0
    batches: int = 0
    failed_batches: int = 0
    largest_batch: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many batches had it

    def as_dict(self) -> dict:
        mean = self.requests / self.batches if self.batches else 0.0
        return {"requests": self.requests, "batches": self.batches, "failed_batches": self.failed_batches,
                "largest_batch": self.largest_batch, "mean_batch": round(mean, 3),
                "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())}}


@dataclass
class _Item:
    image: np.ndarray
    instruction: str
    future: asyncio.Future


class MicroBatcher:
    """`await batcher.submit(image, instruction) -> (action float32 [7], batch size)`; `start()` inside a
    running event loop, `await stop()` at shutdown."""

    def __init__(self, fn: BatchFn, max_batch: int = 8, max_wait_ms: float = 5.0, max_queue: int = 1024) -> None:
        if max_batch < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError(f"max_batch={max_batch} (>= 1), max_wait_ms={max_wait_ms} (>= 0), "
                             f"max_queue={max_queue} (>= 1)")
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopping = False
        self.incoming = 0  # requests the app is still reading or decoding: worth waiting for (the app counts)

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def alive(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        self._stopping = False
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lapa-policy")
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="lapa-batcher")

    async def stop(self) -> None:
        self._stopping = True
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        if self._queue is not None:  # whoever still waits learns that the server is going away
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if not item.future.done():
                    item.future.set_exception(Overloaded("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def submit(self, image: np.ndarray, instruction: str) -> tuple[np.ndarray, int]:
        if self._queue is None or not self.alive:
            raise Overloaded("the batcher is not running")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Item(image, instruction, future))
        except asyncio.QueueFull:
            raise Overloaded(f"{self.max_queue} requests are already waiting; retry later") from None
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while not self._stopping:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0 or self.incoming <= 0:  # nobody else on the way: waiting would only add latency
                    break
                item = await _get_within(self._queue, left)
                if item is None:
                    break
                batch.append(item)
            batch = [item for item in batch if not item.future.done()]  # clients that went away
            if batch:
                await self._serve(batch, loop)

    async def _serve(self, batch: list[_Item], loop: asyncio.AbstractEventLoop) -> None:
        images, instructions = [i.image for i in batch], [i.instruction for i in batch]
        t0 = time.perf_counter()
        try:
            actions = await loop.run_in_executor(self._executor, self.fn, images, instructions)
            actions = check_actions(actions, len(batch))
        except asyncio.CancelledError:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(Overloaded("the server is shutting down"))
            raise
        except Exception as err:  # noqa: BLE001 (the policy's failure is the batch's answer, not the worker's end)
            self.stats.failed_batches += 1
            log.exception("policy failed on a batch of %d", len(batch))
            message = " ".join(f"{type(err).__name__}: {err}".split())[:300]
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(PolicyError(message))
            return
        n = len(batch)
        self.stats.requests += n
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, n)
        self.stats.sizes[n] = self.stats.sizes.get(n, 0) + 1
        log.debug("batch of %d in %.1f ms", n, 1000 * (time.perf_counter() - t0))
        for item, action in zip(batch, actions):
            if not item.future.done():
                item.future.set_result((action, n))


async def _get_within(queue: asyncio.Queue, seconds: float) -> _Item | None:
    """The next item if one comes within `seconds`, else None. (Not `wait_for(queue.get())`: on some
    Python versions an item that arrives as the timeout fires is lost with it.)"""
    getter = asyncio.ensure_future(queue.get())
    done, _ = await asyncio.wait({getter}, timeout=seconds)
    if getter in done:
        return getter.result()
    getter.cancel()
    try:
        return await getter  # it may have taken an item before the cancel reached it
    except asyncio.CancelledError:
        return None


def check_actions(actions: object, n: int) -> np.ndarray:
    """The policy's answer as float32 [n, 7], or PolicyError saying what came back instead."""
    try:
        array = np.asarray(actions, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise PolicyError(f"the policy returned something that is not an array of numbers: {err}") from None
    if array.shape != (n, ACTION_DIM):
        raise PolicyError(f"the policy returned shape {list(array.shape)} for a batch of {n}; expected [{n}, 7]")
    if not np.isfinite(array).all():
        raise PolicyError("the policy returned a non-finite action (NaN or inf)")
    return array


def batch_fn(policy: object) -> BatchFn:
    """The policy's batched call: its `predict_actions(images, instructions)` when it has one, else a loop
    over `predict_action` (still one request at a time through the model, but queued, never concurrent)."""
    batched = getattr(policy, "predict_actions", None)
    if callable(batched):
        return batched
    single = policy.predict_action  # type: ignore[attr-defined]

    def loop(images: Sequence[np.ndarray], instructions: Sequence[str]) -> np.ndarray:
        return np.stack([np.asarray(single(im, text), dtype=np.float32) for im, text in zip(images, instructions)])

    return loop

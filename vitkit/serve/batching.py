"""A small asyncio micro-batcher: requests that arrive within `timeout_s` of the first waiting one run as one batch
of at most `max_batch` (the dynamic batching of Triton and TorchServe, in one queue and one worker task)."""
from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any


class MicroBatcher:
    """`await batcher.submit(item, name)` returns that item's row of `run(items, names)`; `run` is called in a
    worker thread, one batch at a time, so the event loop keeps accepting requests meanwhile."""

    def __init__(self, run: Callable[[list[Any], list[str]], list[dict]], max_batch: int = 8,
                 timeout_s: float = 0.01) -> None:
        self.run, self.max_batch, self.timeout_s = run, max_batch, timeout_s
        self.batch_sizes: Counter[int] = Counter()  # batch size -> batches run (shown by /health)
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def submit(self, item: Any, name: str) -> dict:
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((item, name, future))
        return await future

    async def _collect(self) -> list[tuple]:
        """The first waiting request, then whatever arrives within the timeout, up to max_batch."""
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while len(batch) < self.max_batch:
            left = deadline - asyncio.get_running_loop().time()
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left) if left > 0 else self._queue.get_nowait())
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
        return batch

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            items, names, futures = zip(*batch)
            try:
                rows = await asyncio.to_thread(self.run, list(items), list(names))
            except Exception as err:  # noqa: BLE001 - handed to every waiting request, which answers 500
                for f in futures:
                    if not f.done():
                        f.set_exception(err)
                continue
            self.batch_sizes[len(batch)] += 1
            for f, row in zip(futures, rows):
                if not f.done():  # a client that went away leaves a cancelled future
                    f.set_result(row)

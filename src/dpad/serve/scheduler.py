"""Dynamic batching: a bounded queue of generation jobs and one worker thread that runs them.

The worker takes the oldest waiting job, waits up to ``batch_wait_ms`` (counted from that job's
arrival) for more jobs with the same batching key (the same :class:`DecodeConfig` apart from the
seed), and decodes up to ``max_batch_size`` of them as one batch with
:func:`dpad.engine.decode_batch`; jobs with other keys wait for a later batch.

Each job follows its row through the engine's per-block callback: the response text is updated
block by block (a :class:`TextTracker`), deltas are pushed to the job's event sink as soon as a block
is committed, and the row leaves the batch as soon as its response is final (EOS, a stop string,
``max_tokens`` reached) or its client went away (:meth:`Job.cancel`).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import DecodeConfig
from ..engine import BlockEvent, decode_batch
from .metrics import Metrics

log = logging.getLogger("dpad.serve")


class QueueFull(Exception):
    """The scheduler's queue holds ``max_queue`` waiting jobs."""


class TextTracker:
    """The response text of one row as its blocks are committed.

    The response is the committed ids up to the first EOS, at most ``max_tokens`` ids, cut before
    the first stop string. Text that could still change (a possible beginning of a stop string, an
    incomplete UTF-8 character) is held back until the next block.
    """

    def __init__(self, detok: Callable[[list[int]], str], eos_id: int, max_tokens: int,
                 stop: list[str]) -> None:
        self.detok, self.eos_id, self.max_tokens, self.stop = detok, eos_id, max_tokens, stop
        self.emitted = ""
        self.text = ""
        self.completion_tokens = 0
        self.finish_reason: str | None = None

    def update(self, generated: list[int], last: bool) -> str:
        """Feed all committed ids so far; returns the new text to deliver (maybe empty)."""
        ids = generated[: self.max_tokens]
        eos = self.eos_id in ids
        if eos:
            ids = ids[: ids.index(self.eos_id)]
        text = self.detok(ids)
        reason = None
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
        elif eos:
            reason = "stop"
        elif last or len(generated) >= self.max_tokens:
            reason = "length"
        safe = text
        if reason is None:
            hold = 0
            for s in self.stop:  # the longest tail of the text that begins a stop string
                for k in range(min(len(s) - 1, len(text)), hold, -1):
                    if text.endswith(s[:k]):
                        hold = k
                        break
            safe = text[: len(text) - hold]
            while safe.endswith("\ufffd"):
                safe = safe[:-1]
        if not safe.startswith(self.emitted):  # a detokenizer that rewrote earlier text: keep what was sent
            log.warning("detokenized text is not an extension of the text already streamed")
            safe = self.emitted + safe[len(self.emitted):]
        delta = safe[len(self.emitted):]
        self.emitted = safe
        self.text = safe
        self.completion_tokens = len(ids)
        self.finish_reason = reason
        return delta


@dataclass
class Job:
    """One request's generation: a prompt, its config and where its events go.

    ``sink(kind, payload)`` is called from the worker thread with ``("delta", text)``,
    ``("finish", info)`` (info: finish_reason, completion_tokens, nfe, batch_size...) or
    ``("error", message)``; it must be thread-safe and must not block.
    """

    ids: list[int]
    cfg: DecodeConfig
    tracker: TextTracker
    sink: Callable[[str, Any], None]
    arrived: float = field(default_factory=time.monotonic)
    key: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    batch_size: int = 0
    first_chunk_at: float | None = None

    def __post_init__(self) -> None:
        self.key = batch_key(self.cfg)

    def cancel(self) -> None:
        """The client went away: stop at the next block boundary and deliver nothing more."""
        self.cancelled.set()

    def on_block(self, ev: BlockEvent) -> bool:
        """Worker side: returns True when the row can leave the batch."""
        if self.cancelled.is_set():
            return True
        if self.finished:
            return True
        delta = self.tracker.update(ev.generated, ev.last)
        if delta:
            if self.first_chunk_at is None:
                self.first_chunk_at = time.monotonic()
            self.sink("delta", delta)
        if self.tracker.finish_reason is not None:
            self.finish(ev.nfe)
            return True
        return False

    def finish(self, nfe: int) -> None:
        self.finished = True
        t = self.tracker
        self.sink("finish", {"finish_reason": t.finish_reason or "length", "text": t.text,
                             "completion_tokens": t.completion_tokens, "prompt_tokens": len(self.ids),
                             "nfe": nfe, "batch_size": self.batch_size, "gen_length": self.cfg.gen_length,
                             "method": self.cfg.method_name()})


def batch_key(cfg: DecodeConfig) -> str:
    """Jobs whose configs agree on everything but the seed can share a batch."""
    d = cfg.to_dict()
    d.pop("seed", None)
    return json.dumps(d, sort_keys=True, default=str)


class Scheduler:
    """Collects jobs into batches and runs them on one worker thread."""

    def __init__(self, lm, *, max_batch_size: int = 8, max_queue: int = 64, batch_wait_ms: float = 10.0,  # noqa: ANN001
                 metrics: Metrics | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self.lm = lm
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.batch_wait = max(0.0, batch_wait_ms) / 1000.0
        self.metrics = metrics or Metrics()
        self.queue: collections.deque[Job] = collections.deque()
        self.cv = threading.Condition()
        self.running = 0
        self.current: list[Job] = []
        self.stopping = False
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------------ client side
    def start(self) -> None:
        if self.thread is None:
            self.stopping = False
            self.thread = threading.Thread(target=self._work, name="dpad-scheduler", daemon=True)
            self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self.cv:
            self.stopping = True
            for job in list(self.queue) + self.current:
                if not job.finished:
                    job.finished = True
                    job.sink("error", "the server is shutting down")
                job.cancel()  # a running batch ends at its next block boundary
            self.queue.clear()
            self.cv.notify_all()
        if self.thread is not None:
            self.thread.join(timeout)
            self.thread = None

    def submit(self, job: Job) -> None:
        with self.cv:
            if self.stopping:
                raise QueueFull("the server is shutting down")
            if len(self.queue) >= self.max_queue:
                self.metrics.rejected.inc()
                raise QueueFull(f"the server's queue is full ({self.max_queue} requests waiting, "
                                f"{self.running} decoding); retry later")
            self.queue.append(job)
            self.cv.notify_all()

    def withdraw(self, job: Job) -> bool:
        """Remove a job that is still waiting; False if it already runs (or ran)."""
        with self.cv:
            try:
                self.queue.remove(job)
            except ValueError:
                return False
            return True

    @property
    def waiting(self) -> int:
        return len(self.queue)

    # ------------------------------------------------------------------ worker side
    def _take_batch(self) -> list[Job] | None:
        """The next batch: a full group of compatible jobs as soon as there is one, else the oldest
        job's group once that job has waited ``batch_wait``."""
        with self.cv:
            while True:
                while not self.queue and not self.stopping:
                    self.cv.wait()
                if self.stopping:
                    return None
                groups: dict[str, list[Job]] = {}
                for j in self.queue:
                    groups.setdefault(j.key, []).append(j)
                first = self.queue[0]
                full = next((g for g in groups.values() if len(g) >= self.max_batch_size), None)
                wait = first.arrived + self.batch_wait - time.monotonic()
                if full is not None or wait <= 0:
                    batch = (full or groups[first.key])[: self.max_batch_size]
                    for j in batch:
                        self.queue.remove(j)
                    self.current = batch
                    self.running = len(batch)
                    return batch
                self.cv.wait(wait)  # more compatible jobs may arrive

    def _work(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            batch = [j for j in batch if not j.cancelled.is_set()]
            try:
                if batch:
                    self._run(batch)
            except Exception as e:  # noqa: BLE001 - reported to every client of the batch
                log.exception("batch failed")
                for j in batch:
                    if not j.finished:
                        j.finished = True
                        j.sink("error", f"generation failed: {type(e).__name__}: {e}")
            finally:
                with self.cv:
                    self.running = 0
                    self.current = []

    def _run(self, batch: list[Job]) -> None:
        lm = self.lm
        for j in batch:
            j.batch_size = len(batch)
        m = self.metrics
        m.batches.inc()
        m.batch_size.observe(len(batch))

        def on_block(ev: BlockEvent) -> bool:
            return batch[ev.row].on_block(ev)

        outs = decode_batch(lm.model, [j.ids for j in batch], batch[0].cfg, mask_id=lm.mask_token_id,
                            eos_id=lm.eos_token_id, eot_id=getattr(lm, "eot_token_id", None),
                            seeds=[j.cfg.seed for j in batch], on_block=on_block)
        m.batch_forwards.inc(outs[0].batch_forwards if outs else 0)
        for j, out in zip(batch, outs, strict=True):
            if not j.finished and not j.cancelled.is_set():  # not reached: the last block finishes a row
                j.tracker.update(out.generated, True)
                j.finish(out.nfe)

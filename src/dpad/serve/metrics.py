"""A small thread-safe metrics registry rendered in the Prometheus text format (version 0.0.4).

Written by hand so that ``/metrics`` needs no extra dependency: counters and histograms with
labels, plus gauges read at render time.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
TOKEN_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)

Labels = tuple[tuple[str, str], ...]


def _fmt_labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    items = list(labels) + ([extra] if extra else [])
    if not items:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in items)
    return "{" + body + "}"


def _escape(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer():
        return str(int(v))
    return repr(float(v))


class Counter:
    def __init__(self, name: str, help_: str, label_names: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_, tuple(label_names)
        self.values: dict[Labels, float] = {}
        self.lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> Labels:
        return tuple((n, str(labels[n])) for n in self.label_names)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        k = self._key(labels)
        with self.lock:
            self.values[k] = self.values.get(k, 0.0) + amount

    def get(self, **labels: str) -> float:
        return self.values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self.lock:
            items = sorted(self.values.items())
        if not items and not self.label_names:
            items = [((), 0.0)]
        out += [f"{self.name}{_fmt_labels(k)} {_fmt_value(v)}" for k, v in items]
        return out


class Histogram:
    def __init__(self, name: str, help_: str, buckets: Sequence[float], label_names: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_, tuple(label_names)
        self.buckets = tuple(sorted(buckets))
        self.values: dict[Labels, tuple[list[int], float, int]] = {}
        self.lock = threading.Lock()

    def observe(self, value: float, **labels: str) -> None:
        k = tuple((n, str(labels[n])) for n in self.label_names)
        with self.lock:
            counts, total, n = self.values.get(k, ([0] * len(self.buckets), 0.0, 0))
            for i, b in enumerate(self.buckets):
                if value <= b:
                    counts[i] += 1
            self.values[k] = (counts, total + value, n + 1)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self.lock:
            items = sorted((k, (list(c), s, n)) for k, (c, s, n) in self.values.items())
        for k, (counts, total, n) in items:
            for b, c in zip(self.buckets, counts, strict=True):
                out.append(f"{self.name}_bucket{_fmt_labels(k, ('le', _fmt_value(float(b))))} {c}")
            out.append(f"{self.name}_bucket{_fmt_labels(k, ('le', '+Inf'))} {n}")
            out.append(f"{self.name}_sum{_fmt_labels(k)} {_fmt_value(total)}")
            out.append(f"{self.name}_count{_fmt_labels(k)} {n}")
        return out


class Gauge:
    def __init__(self, name: str, help_: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help_, read

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge",
                f"{self.name} {_fmt_value(float(self.read()))}"]


class Metrics:
    """The server's metrics."""

    def __init__(self) -> None:
        self.requests = Counter("dpad_requests_total", "HTTP requests by endpoint and status code.",
                                ("endpoint", "status"))
        self.latency = Histogram("dpad_request_latency_seconds",
                                 "Request latency (streams: until the last chunk) by endpoint.",
                                 LATENCY_BUCKETS, ("endpoint",))
        self.first_chunk = Histogram("dpad_time_to_first_token_seconds",
                                     "Time from arrival to the first streamed text chunk.", LATENCY_BUCKETS)
        self.prompt_tokens = Counter("dpad_prompt_tokens_total", "Prompt tokens of finished generations.")
        self.generated_tokens = Counter("dpad_generated_tokens_total",
                                        "Completion tokens delivered (up to EOS / stop / max_tokens).")
        self.nfe = Counter("dpad_nfe_total", "Model forwards summed over rows (each row's NFE).")
        self.batch_forwards = Counter("dpad_batch_forwards_total", "Batched model forwards.")
        self.batches = Counter("dpad_batches_total", "Batches run by the scheduler.")
        self.batch_size = Histogram("dpad_batch_size", "Rows per scheduled batch.", BATCH_BUCKETS)
        self.rows_per_forward = Histogram("dpad_rows_per_forward", "Rows in each batched model forward.",
                                          BATCH_BUCKETS)
        self.tokens_per_forward = Histogram("dpad_tokens_per_forward",
                                            "Tokens fed to each batched model forward (padding excluded).",
                                            TOKEN_BUCKETS)
        self.queue_wait = Histogram("dpad_queue_wait_seconds", "Time from arrival to joining the running batch.",
                                    LATENCY_BUCKETS)
        self.rejected = Counter("dpad_queue_rejections_total", "Requests refused with 429 (queue full).")
        self.cancelled = Counter("dpad_cancelled_total", "Requests whose client went away before the end.")
        self.gauges: list[Gauge] = []

    def add_gauge(self, name: str, help_: str, read: Callable[[], float]) -> None:
        self.gauges.append(Gauge(name, help_, read))

    def render(self) -> str:
        lines: list[str] = []
        for m in (self.requests, self.latency, self.first_chunk, self.prompt_tokens, self.generated_tokens,
                  self.nfe, self.batch_forwards, self.batches, self.batch_size, self.rows_per_forward,
                  self.tokens_per_forward, self.queue_wait, self.rejected, self.cancelled,
                  *self.gauges):
            lines += m.render()
        return "\n".join(lines) + "\n"

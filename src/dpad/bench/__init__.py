"""Benchmarks: the speed-up ladder (``dpad bench``, :mod:`dpad.bench.ladder`)."""

__all__ = ["ladder", "plot"]

"""Cache policies: how much of a row's view each forward recomputes.

A row's *view* for a block is its prefix (prompt and committed blocks), the block, then the suffix
positions its suffix policy keeps; view slot ``j < block_end`` is canvas column ``j``. Every policy
is a choice of which contiguous span of the view a forward feeds:

- ``NoCache``: every step feeds the whole view (self-contained: it reads no cached K/V).
- ``PrefixCache``: the block-start forward (the *refresh*) feeds the whole view and stores its K/V;
  later steps feed block + kept suffix and read the frozen prefix K/V.
- ``DualCache``: the refresh stores the whole view; later steps feed only the block and read the
  frozen prefix and kept-suffix K/V.

For a model whose logits are shifted (Dream), a cached step also feeds the last token before the
block so that the block's first position gets its logits from its left neighbour (not with
``compat='dpad-dream'``, whose steps feed from the block start).

A cached step writes K/V only at slots the same forward reads back, never at slots a later step
reads, so its writes need not be kept: the refresh's K/V of the prefix (and, for the dual cache,
of the kept suffix) are all a later step needs. The runner (:mod:`dpad.engine.runner`) holds the
K/V per row and batches rows of any policy, block and length into one forward.
"""

from __future__ import annotations


class CachePolicy:
    name = "base"
    refreshes = False
    """Whether the block start runs a refresh forward (whole view, K/V stored)."""

    def step_span(self, bs: int, be: int, size: int, shift: int, from_block: bool) -> tuple[int, int]:
        """The view span ``[start, end)`` a cached step feeds (``bs``/``be``: the block's view
        columns; ``size``: the view's length)."""
        raise NotImplementedError


class NoCache(CachePolicy):
    name = "none"

    def step_span(self, bs: int, be: int, size: int, shift: int, from_block: bool) -> tuple[int, int]:
        return 0, size


class PrefixCache(CachePolicy):
    name = "prefix"
    refreshes = True

    @staticmethod
    def _start(bs: int, shift: int, from_block: bool) -> int:
        return bs if from_block else max(0, bs - shift)

    def step_span(self, bs: int, be: int, size: int, shift: int, from_block: bool) -> tuple[int, int]:
        return self._start(bs, shift, from_block), size


class DualCache(PrefixCache):
    name = "dual"

    def step_span(self, bs: int, be: int, size: int, shift: int, from_block: bool) -> tuple[int, int]:
        return self._start(bs, shift, from_block), be


POLICIES: dict[str, type[CachePolicy]] = {"none": NoCache, "prefix": PrefixCache, "dual": DualCache}


def from_config(cfg) -> CachePolicy:  # noqa: ANN001
    return POLICIES[cfg.cache]()

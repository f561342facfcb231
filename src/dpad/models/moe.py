"""LLaDA-MoE's mixture-of-experts feed-forward: :class:`MoEArgs` and :class:`SparseMoE` live in
:mod:`dpad.models.layers` with the other shared layers; this module names them for the model files."""

from .layers import MoEArgs, SparseMoE

__all__ = ["MoEArgs", "SparseMoE"]

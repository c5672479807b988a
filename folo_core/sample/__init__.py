"""Sampler contract and the per-step sampling metadata."""

from folo_core.sample.interface import Sampler, SamplerOutput
from folo_core.sample.metadata import SamplingMetadata

__all__ = ["Sampler", "SamplerOutput", "SamplingMetadata"]

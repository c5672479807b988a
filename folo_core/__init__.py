"""Folo core: contracts, plugin manager, config, engine loop and model runner.

``from folo_core import LLM, SamplingParams`` is the offline API (vLLM-compatible).
"""

from folo_core.config import EngineConfig
from folo_core.engine.llm import LLM
from folo_core.engine.llm_engine import LLMEngine
from folo_core.outputs import CompletionOutput, Logprob, RequestOutput
from folo_core.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "LLMEngine",
    "EngineConfig",
    "SamplingParams",
    "StructuredOutputsParams",
    "RequestOutputKind",
    "RequestOutput",
    "CompletionOutput",
    "Logprob",
    "__version__",
]

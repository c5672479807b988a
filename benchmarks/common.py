"""Shared by the offline benchmarks: engine options from the CLI and vLLM's "random" dataset."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import numpy as np

from folo_core.config import EngineConfig


def engine_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """All engine options as ``LLM`` keywords, with the default model resolved to its path."""
    kwargs = EngineConfig.from_cli_args(args).flat()
    if kwargs["model"] is None:
        from folo_core.default_model import default_model_path

        kwargs["model"] = default_model_path()
    return kwargs


def vocab_size(model_path: str) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_path).vocab_size


@dataclass
class BenchRequest:
    prompt_token_ids: list[int]
    output_len: int


def random_requests(num: int, input_len: int, output_len: int, range_ratio: float, vocab_size: int,
                    seed: int, reserved: int = 100) -> list[BenchRequest]:
    """Lengths uniform in ``[len * (1 - r), len * (1 + r)]``; ids avoid the special-token ends."""
    rng = np.random.default_rng(seed)
    in_lens = rng.integers(max(1, int(input_len * (1 - range_ratio))), int(input_len * (1 + range_ratio)) + 1, num)
    out_lens = rng.integers(max(1, int(output_len * (1 - range_ratio))), int(output_len * (1 + range_ratio)) + 1, num)
    return [BenchRequest(rng.integers(reserved, vocab_size - reserved, n).tolist(), int(o))
            for n, o in zip(in_lens, out_lens)]

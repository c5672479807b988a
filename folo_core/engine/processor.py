"""Prompt -> token ids, with the validation a user needs to see before anything runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

from folo_core.sampling_params import SamplingParams

PromptType = Union[str, Mapping[str, Any]]
"""A string, ``{"prompt": str}`` or ``{"prompt_token_ids": [int, ...]}`` (vLLM's forms);
either mapping may add ``"cache_salt"``."""


class Processor:
    def __init__(self, tokenizer, max_model_len: int, vocab_size: int, eos_token_ids: frozenset[int]) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids

    def tokenize(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            text = prompt
        elif isinstance(prompt, Mapping) and "prompt_token_ids" in prompt:
            ids = prompt["prompt_token_ids"]
            if isinstance(ids, (str, bytes)) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise ValueError("prompt_token_ids must be a list of integers")
            return prompt.get("prompt"), list(ids)
        elif isinstance(prompt, Mapping) and isinstance(prompt.get("prompt"), str):
            text = prompt["prompt"]
        else:
            raise ValueError(
                f"unsupported prompt {prompt!r}: pass a string, {{'prompt': str}} or {{'prompt_token_ids': [int, ...]}}")
        if self.tokenizer is None:
            raise ValueError("text prompts need a tokenizer (skip_tokenizer_init=True: pass prompt_token_ids)")
        return text, self.tokenizer.encode(text)

    def process(self, prompt: PromptType, params: SamplingParams) -> tuple[str | None, list[int], SamplingParams]:
        text, ids = self.tokenize(prompt)
        if not ids:
            raise ValueError("The decoder prompt cannot be empty")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of vocabulary (size {self.vocab_size})")
        if len(ids) > self.max_model_len:
            raise ValueError(
                f"The decoder prompt (length {len(ids)}) is longer than the maximum model length of "
                f"{self.max_model_len}. Make sure that `max_model_len` is no smaller than the number of "
                "text tokens.")
        if not isinstance(params, SamplingParams):
            raise TypeError(f"sampling_params must be SamplingParams, got {type(params).__name__}")
        params = params.clone()
        params._eos_token_ids = self.eos_token_ids
        return text, ids, params

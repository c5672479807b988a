"""Prompt -> token ids, with the validation a user needs to see before anything runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from folo_core.engine.chat_utils import check_unicode
from folo_core.sampling_params import SamplingParams

if TYPE_CHECKING:
    from folo_core.structured_output.manager import StructuredOutputManager

PromptType = Union[str, Mapping[str, Any]]
"""A string, ``{"prompt": str}`` or ``{"prompt_token_ids": [int, ...]}`` (vLLM's forms);
either mapping may add ``"cache_salt"``."""


@dataclass
class ProcessedRequest:
    """A request ready for the engine: tokenized, checked, with its own copy of the params."""

    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    cache_salt: str | None = None


def max_prompt_chars(tokenizer: Any, max_model_len: int) -> int:
    """The most characters a text can have and still encode to ``max_model_len`` tokens.

    No token spells more characters than its vocabulary string (byte-level BPE writes one
    character per byte), so a longer text cannot fit. A normalizer (e.g. Qwen's NFC) may
    merge a few code points into one, hence the margin.
    """
    longest = max(map(len, tokenizer.get_vocab()), default=1)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    margin = 4 if backend is None or backend.normalizer is not None else 1
    return max_model_len * longest * margin


def bad_words_token_ids(tokenizer: Any, words: list[str]) -> list[list[int]]:
    """Each bad word as it is tokenized at the start of text and after a space (vLLM's rule)."""
    sequences: list[list[int]] = []
    for word in words:
        for text in (word, " " + word.lstrip()):
            ids = tokenizer.encode(text, add_special_tokens=False)
            if ids and ids not in sequences:
                sequences.append(ids)
    return sequences


class Processor:
    """Everything a request is checked against before it is queued, so that no value of it can
    fail an engine step (and with it every other request in flight)."""

    def __init__(self, tokenizer, max_model_len: int, vocab_size: int, eos_token_ids: frozenset[int],
                 max_logprobs: int = 20, structured_output_manager: "StructuredOutputManager | None" = None) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self.max_logprobs = vocab_size if max_logprobs == -1 else max_logprobs
        self.structured_output_manager = structured_output_manager
        self.max_prompt_chars = max_prompt_chars(tokenizer, max_model_len) if tokenizer is not None else None

    def check_prompt_chars(self, text: str, what: str = "prompt") -> None:
        """Refuse, before any tokenizing or rendering, a text too long for any prompt that fits."""
        if self.max_prompt_chars is not None and len(text) > self.max_prompt_chars:
            raise ValueError(
                f"The {what} has {len(text)} characters; no text longer than {self.max_prompt_chars} characters "
                f"can fit the maximum model length of {self.max_model_len} tokens.")

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
        return text, self.encode_text(text)

    def encode_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of a text prompt, refused first if it is too long or not valid Unicode."""
        self.check_prompt_chars(text)
        check_unicode(text, "prompt")
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def check_token_ids(self, ids: Any, what: str = "token id") -> None:
        """Every id in ``ids`` is in the vocabulary, or a ``ValueError`` names the first that is not."""
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"{what} {bad[0]} is out of vocabulary (size {self.vocab_size})")

    def process(self, prompt: PromptType, params: SamplingParams) -> ProcessedRequest:
        """Tokenize and check; pure (no engine state), so it may run on any thread."""
        text, ids = self.tokenize(prompt)
        if not ids:
            raise ValueError("The decoder prompt cannot be empty")
        self.check_token_ids(ids)
        if len(ids) > self.max_model_len:
            raise ValueError(
                f"The decoder prompt (length {len(ids)}) is longer than the maximum model length of "
                f"{self.max_model_len}. Make sure that `max_model_len` is no smaller than the number of "
                "text tokens.")
        cache_salt = prompt.get("cache_salt") if isinstance(prompt, Mapping) else None
        return ProcessedRequest(text, ids, self.process_params(params), cache_salt)

    def process_params(self, params: SamplingParams) -> SamplingParams:
        """A copy of ``params`` checked against the model: vocabulary, log-prob limit, length."""
        if not isinstance(params, SamplingParams):
            raise TypeError(f"sampling_params must be SamplingParams, got {type(params).__name__}")
        params = params.clone()
        params._verify_args()  # a caller may have changed fields since construction
        for name, ids in (("stop_token_ids", params.stop_token_ids), ("allowed_token_ids", params.allowed_token_ids),
                          ("logit_bias", params.logit_bias)):
            self.check_token_ids(ids or (), f"{name} entry")
        for kind, wanted in (("sample", params.logprobs), ("prompt", params.prompt_logprobs)):
            if wanted is not None and wanted > self.max_logprobs:
                raise ValueError(f"Requested {kind} logprobs of {wanted}, which is greater than max allowed: "
                                 f"{self.max_logprobs}")
        if params.structured_outputs is not None:
            if self.structured_output_manager is None:
                raise ValueError("this engine has no structured output support")
            self.structured_output_manager.validate(params)  # a broken schema fails here, not in a step
        params._eos_token_ids = self.eos_token_ids
        if params.bad_words:
            if self.tokenizer is None:
                raise ValueError("bad_words need a tokenizer (skip_tokenizer_init=True was set)")
            params._bad_words_token_ids = bad_words_token_ids(self.tokenizer, params.bad_words)
        if params.top_k >= self.vocab_size:  # keeps the whole vocabulary: the same as no top-k
            params.top_k = 0
        # No request outputs more than the model length, so a larger minimum changes nothing.
        params.min_tokens = min(params.min_tokens, self.max_model_len)
        return params

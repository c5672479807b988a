"""``SamplingParams``: vLLM's names, defaults and validation messages."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from numbers import Real

from folo_core.utils import lone_surrogate_at

_SAMPLING_EPS = 1e-5
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class RequestOutputKind(enum.Enum):
    """What each ``RequestOutput`` of a streamed request carries (vLLM semantics)."""

    CUMULATIVE = 0  # everything generated so far
    DELTA = 1  # only what is new since the previous output
    FINAL_ONLY = 2  # nothing until the request finishes


STRUCTURED_OUTPUT_KINDS = ("json", "regex", "choice", "grammar", "json_object")
"""The constraints ``StructuredOutputsParams`` can carry (one per request)."""


@dataclass
class StructuredOutputsParams:
    """Constrain a request's output (vLLM >= 0.12's names): exactly one of the fields.

    ``json`` is a JSON schema (dict or string), ``regex`` a regular expression,
    ``choice`` a list of strings, ``grammar`` a Lark grammar (or GBNF), and
    ``json_object=True`` any JSON object.
    """

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False  # JSON without optional whitespace (vLLM's option)

    def __post_init__(self) -> None:
        given = self._given()
        if len(given) != 1:
            raise ValueError("structured_outputs takes exactly one of json, regex, choice, grammar, json_object; "
                             f"got {', '.join(given) or 'none'}")
        if self.choice is not None and (not isinstance(self.choice, list) or not self.choice
                                        or not all(isinstance(c, str) for c in self.choice)):
            raise ValueError("structured_outputs.choice must be a non-empty list of strings")
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value):
                raise ValueError(f"structured_outputs.{name} must be a non-empty string")
        if self.json is not None and not isinstance(self.json, (str, dict)):
            raise ValueError("structured_outputs.json must be a JSON schema (an object or a string)")

    def _given(self) -> list[str]:
        return [name for name in STRUCTURED_OUTPUT_KINDS if getattr(self, name) not in (None, False)]

    @property
    def kind(self) -> str:
        """Which constraint: one of ``STRUCTURED_OUTPUT_KINDS``."""
        return self._given()[0]

    @property
    def spec(self) -> object:
        return getattr(self, self.kind)


@dataclass
class SamplingParams:
    """How to sample one request; ``temperature=0`` means greedy."""

    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None  # per prompt token: its logprob and the top-k (the request skips the prefix cache)
    skip_special_tokens: bool = True
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    structured_outputs: StructuredOutputsParams | None = None
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit (clamped to [-100, 100])
    allowed_token_ids: list[int] | None = None  # only these may be sampled
    bad_words: list[str] | None = None  # never generated (each as it would be tokenized, with or without a space)
    # Filled by the processor from ``bad_words``: the token sequences to avoid.
    _bad_words_token_ids: list[list[int]] = field(default_factory=list, repr=False, compare=False)
    # Filled by the engine: the model's EOS ids, honoured unless ``ignore_eos``.
    _eos_token_ids: frozenset[int] = field(default=frozenset(), repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [] if self.stop is None else self.stop
        self.stop_token_ids = [] if self.stop_token_ids is None else self.stop_token_ids
        self._verify_args()
        self.stop, self.stop_token_ids = list(self.stop), list(self.stop_token_ids)
        if self.top_k == -1:  # vLLM < 0.9 used -1 for "disabled"
            self.top_k = 0
        if self.temperature < _SAMPLING_EPS:
            # Greedy: the truncation knobs cannot change the argmax.
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0

    def _verify_args(self) -> None:
        """vLLM's ranges, plus what must hold for the engine step never to fail on a value:
        integers fit int64 (the runner's arrays), floats are finite numbers."""
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        def integer(name: str, value: object, optional: bool = False) -> None:
            if value is None and optional:
                return
            check(isinstance(value, int) and not isinstance(value, bool) and INT64_MIN <= value <= INT64_MAX,
                  f"{name} must be a 64-bit integer, got {value!r}.")

        def number(name: str, value: object) -> None:
            check(isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value),
                  f"{name} must be a finite number, got {value!r}.")

        for name in ("presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p",
                     "min_p"):
            number(name, getattr(self, name))
        for name, optional in (("n", False), ("top_k", False), ("seed", True), ("max_tokens", True),
                               ("min_tokens", False), ("logprobs", True),
                               ("prompt_logprobs", True)):
            integer(name, getattr(self, name), optional)
        check(self.n >= 1, f"n must be at least 1, got {self.n}.")
        check(-2.0 <= self.presence_penalty <= 2.0,
              f"presence_penalty must be in [-2, 2], got {self.presence_penalty}.")
        check(-2.0 <= self.frequency_penalty <= 2.0,
              f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}.")
        check(self.repetition_penalty > 0.0,
              f"repetition_penalty must be greater than zero, got {self.repetition_penalty}.")
        check(self.temperature >= 0.0, f"temperature must be non-negative, got {self.temperature}.")
        check(0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}.")
        check(self.top_k >= -1, f"top_k must be 0 or -1 (disable), or at least 1, got {self.top_k}.")
        check(0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}.")
        check(self.max_tokens is None or self.max_tokens >= 1,
              f"max_tokens must be at least 1, got {self.max_tokens}.")
        check(self.min_tokens >= 0, f"min_tokens must be greater than or equal to 0, got {self.min_tokens}.")
        check(self.max_tokens is None or self.min_tokens <= self.max_tokens,
              f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, got {self.min_tokens}.")
        check(self.logprobs is None or self.logprobs >= 0,
              f"logprobs must be non-negative, got {self.logprobs}.")
        check(self.prompt_logprobs is None or self.prompt_logprobs >= 0,
              f"prompt_logprobs must be non-negative, got {self.prompt_logprobs}.")
        # Child i of an n > 1 request samples with seed + i (``ParentRequest``).
        check(self.seed is None or self.seed + self.n - 1 <= INT64_MAX,
              f"seed + n - 1 must fit a 64-bit integer, got seed={self.seed} with n={self.n}.")
        check(isinstance(self.stop, (list, tuple)) and all(isinstance(s, str) and s for s in self.stop),
              "stop must be a non-empty string or a list of non-empty strings.")
        check(all(lone_surrogate_at(s) is None for s in self.stop),
              "stop strings must be valid Unicode (no lone surrogates).")
        check(self.structured_outputs is None or isinstance(self.structured_outputs, StructuredOutputsParams),
              "structured_outputs must be StructuredOutputsParams.")
        bias = self.logit_bias
        check(bias is None or (isinstance(bias, dict) and all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 and isinstance(v, Real)
            and not isinstance(v, bool) and math.isfinite(v) for t, v in bias.items())),
            "logit_bias must map non-negative token ids to finite numbers.")
        allowed = self.allowed_token_ids
        check(allowed is None or (isinstance(allowed, (list, tuple)) and len(allowed) > 0 and all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in allowed)),
            "allowed_token_ids must be a non-empty list of non-negative integers.")
        check(self.bad_words is None or (isinstance(self.bad_words, (list, tuple))
                                         and all(isinstance(w, str) and w and lone_surrogate_at(w) is None
                                                 for w in self.bad_words)),
              "bad_words must be a list of non-empty strings.")
        ids = self.stop_token_ids
        check(isinstance(ids, (list, tuple))
              and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids),
              f"stop_token_ids must be a list of non-negative integers, got {ids!r}.")

    @property
    def greedy(self) -> bool:
        return self.temperature < _SAMPLING_EPS

    @property
    def all_stop_token_ids(self) -> frozenset[int]:
        """Token ids that finish the request: ``stop_token_ids`` plus EOS unless ignored."""
        eos = frozenset() if self.ignore_eos else self._eos_token_ids
        return eos | frozenset(self.stop_token_ids)

    def clone(self) -> "SamplingParams":
        from copy import copy

        return copy(self)

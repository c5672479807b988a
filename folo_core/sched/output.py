"""What one scheduling decision tells the model runner, and what comes back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from folo_core.sampling_params import SamplingParams

if TYPE_CHECKING:
    import torch


@dataclass
class NewRequestData:
    """A request the runner has no state for: first scheduled, or resumed after preemption."""

    req_id: str
    token_ids: list[int]  # prompt + outputs so far (outputs only after a preemption)
    num_prompt_tokens: int
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int


@dataclass
class CachedRequestData:
    """A request the runner already holds; only what changed since the last step."""

    req_id: str
    new_block_ids: list[int]
    num_computed_tokens: int
    # Blocks the request holds now: new_block_ids are its last ones. Fewer than the runner
    # knew when blocks of rejected draft tokens were given back.
    num_blocks: int


@dataclass
class SchedulerOutput:
    scheduled_new_reqs: list[NewRequestData]
    scheduled_cached_reqs: list[CachedRequestData]
    num_scheduled_tokens: dict[str, int]
    total_num_scheduled_tokens: int
    finished_req_ids: set[str] = field(default_factory=set)  # runner drops their state
    preempted_req_ids: set[str] = field(default_factory=set)  # likewise; they return as new
    # Structured output: the first bitmask row of each request that samples under a grammar now
    # (a request verifying drafts has one row per draft position and one after, consecutive).
    structured_output_request_ids: dict[str, int] = field(default_factory=dict)
    grammar_bitmask: "torch.Tensor | None" = None
    # Draft tokens to verify, fed after each request's last token (counted in num_scheduled_tokens).
    scheduled_spec_decode_tokens: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class LogprobsEntry:
    """Top logprobs of one sampled position; index 0 is the sampled token itself."""

    token_ids: list[int]
    logprobs: list[float]
    ranks: list[int]  # rank of each token in the distribution (1 = most likely)


@dataclass
class ModelRunnerOutput:
    """Tokens of the requests that finished their scheduled prompt/decode tokens.

    Each sampling request gets a list: one token, or with draft tokens the kept drafts
    and one drawn token (``logprobs`` has one entry per token). Requests in the middle
    of a chunked prefill sample nothing and are absent. A request the runner could not
    take into its batch (the failure is its own) is in ``failed_req_ids`` with the
    error; the step ran without it. ``spec_token_ids`` are drafts proposed for the next step.
    """

    sampled_token_ids: dict[str, list[int]]
    logprobs: dict[str, list[LogprobsEntry]] = field(default_factory=dict)
    failed_req_ids: dict[str, str] = field(default_factory=dict)
    # Requests with prompt_logprobs: (position of the first entry, one entry per prompt token of the chunk).
    prompt_logprobs: dict[str, tuple[int, list[LogprobsEntry]]] = field(default_factory=dict)
    spec_token_ids: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class EngineCoreOutput:
    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[LogprobsEntry] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0
    error: str | None = None  # why, when finish_reason is "error"
    prompt_logprobs: list[LogprobsEntry] | None = None  # with a request's first output: prompt tokens 1..

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

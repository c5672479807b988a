"""Per-request state the model runner keeps between steps.

Rows are dense (``0..num_reqs-1``); removing a request moves the last row into
its place. Token ids, block tables and sampling parameters live in numpy arrays
so each step's inputs are built with vectorised gathers, and per-step Python
work grows with what changed, not with everything in flight.
"""

from __future__ import annotations

import numpy as np
import torch

from folo_core.sampling_params import SamplingParams
from folo_core.sched.output import NewRequestData
from folo_core.sample.logits_processors import needs_logits_processing
from folo_core.sample.metadata import SamplingMetadata

_EPS = 1e-5


class InputBatch:
    def __init__(self, max_num_reqs: int, max_model_len: int, max_blocks_per_req: int, device: torch.device) -> None:
        self.max_num_reqs = max_num_reqs
        self.device = device
        self.req_ids: list[str] = []
        self.req_id_to_index: dict[str, int] = {}
        self.token_ids = np.zeros((max_num_reqs, max_model_len + 1), dtype=np.int64)
        self.num_tokens = np.zeros(max_num_reqs, dtype=np.int64)
        self.num_prompt_tokens = np.zeros(max_num_reqs, dtype=np.int64)
        self.num_computed_tokens = np.zeros(max_num_reqs, dtype=np.int64)
        self.block_table = np.zeros((max_num_reqs, max_blocks_per_req), dtype=np.int32)
        self.num_blocks = np.zeros(max_num_reqs, dtype=np.int64)
        # Sampling parameters by row.
        self.temperature = np.zeros(max_num_reqs, dtype=np.float32)
        self.top_p = np.ones(max_num_reqs, dtype=np.float32)
        self.top_k = np.zeros(max_num_reqs, dtype=np.int64)
        self.min_p = np.zeros(max_num_reqs, dtype=np.float32)
        self.presence = np.zeros(max_num_reqs, dtype=np.float32)
        self.frequency = np.zeros(max_num_reqs, dtype=np.float32)
        self.repetition = np.ones(max_num_reqs, dtype=np.float32)
        self.num_logprobs = np.full(max_num_reqs, -1, dtype=np.int64)
        self.min_tokens = np.zeros(max_num_reqs, dtype=np.int64)
        self._row_arrays = [self.token_ids, self.num_tokens, self.num_prompt_tokens, self.num_computed_tokens,
                            self.block_table, self.num_blocks, self.temperature, self.top_p, self.top_k,
                            self.min_p, self.presence, self.frequency, self.repetition, self.num_logprobs,
                            self.min_tokens]
        # By request id (rows move, requests do not). A seeded request's generator outlives
        # its preemption, so its sampling continues where it stopped (vLLM keeps it too):
        # the same seed gives the same text under any memory pressure.
        self.params: dict[str, SamplingParams] = {}
        self.generators: dict[str, torch.Generator] = {}
        self.logits_processed: set[str] = set()  # requests with logit_bias, allowed_token_ids or bad_words
        self.prompt_logprobs: set[str] = set()  # requests with prompt_logprobs

    @property
    def num_reqs(self) -> int:
        return len(self.req_ids)

    def add_request(self, data: NewRequestData) -> int:
        row = len(self.req_ids)
        if row >= self.max_num_reqs:
            raise RuntimeError(f"input batch is full ({self.max_num_reqs} requests)")
        req_id = data.req_id
        self.req_ids.append(req_id)
        self.req_id_to_index[req_id] = row
        n = len(data.token_ids)
        self.token_ids[row, :n] = data.token_ids
        self.num_tokens[row] = n
        self.num_prompt_tokens[row] = data.num_prompt_tokens
        self.num_computed_tokens[row] = data.num_computed_tokens
        self.num_blocks[row] = 0
        self.append_blocks(row, data.block_ids)
        p = data.sampling_params
        self.params[req_id] = p
        if needs_logits_processing(p):
            self.logits_processed.add(req_id)
        if p.prompt_logprobs is not None:
            self.prompt_logprobs.add(req_id)
        self.temperature[row] = 0.0 if p.greedy else p.temperature
        self.top_p[row], self.top_k[row], self.min_p[row] = p.top_p, p.top_k, p.min_p
        self.presence[row], self.frequency[row] = p.presence_penalty, p.frequency_penalty
        self.repetition[row] = p.repetition_penalty
        self.num_logprobs[row] = -1 if p.logprobs is None else p.logprobs
        self.min_tokens[row] = p.min_tokens if p.all_stop_token_ids else 0
        if p.seed is not None and not p.greedy and req_id not in self.generators:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(p.seed)
            self.generators[req_id] = generator
        return row

    def append_blocks(self, row: int, block_ids: list[int], num_blocks: int | None = None) -> None:
        """Add ``block_ids`` as the row's last blocks; ``num_blocks``: its total after them
        (smaller than before when blocks of rejected drafts were given back)."""
        start = self.num_blocks[row] if num_blocks is None else num_blocks - len(block_ids)
        self.block_table[row, start:start + len(block_ids)] = block_ids
        self.num_blocks[row] = start + len(block_ids)

    def remove_request(self, req_id: str, preempted: bool = False) -> None:
        """Drop the request's row; a ``preempted`` one keeps its generator for when it returns."""
        if not preempted:
            self.generators.pop(req_id, None)
        row = self.req_id_to_index.pop(req_id, None)
        if row is None:
            return
        self.params.pop(req_id, None)
        self.logits_processed.discard(req_id)
        self.prompt_logprobs.discard(req_id)
        last = len(self.req_ids) - 1
        moved = self.req_ids.pop()
        if row != last:
            self.req_ids[row] = moved
            self.req_id_to_index[moved] = row
            for array in self._row_arrays:
                array[row] = array[last]

    def append_token(self, row: int, token_id: int) -> None:
        self.token_ids[row, self.num_tokens[row]] = token_id
        self.num_tokens[row] += 1

    # -- sampling -------------------------------------------------------------

    def write_draft_tokens(self, row: int, draft_token_ids: list[int]) -> None:
        """Place drafts after the row's tokens (not counted in ``num_tokens``): the step's input
        ids read them, and a draft position's sampling metadata counts the drafts before it."""
        start = self.num_tokens[row]
        self.token_ids[row, start:start + len(draft_token_ids)] = draft_token_ids

    def _output_ends(self, rows: np.ndarray, num_drafts_before: np.ndarray | None) -> np.ndarray:
        """Per row, the end of its outputs so far: its tokens, plus the drafts before its position."""
        return self.num_tokens[rows] + (0 if num_drafts_before is None else num_drafts_before)

    def logits_processing_rows(self, rows: np.ndarray, num_drafts_before: np.ndarray | None = None,
                               ) -> list[tuple[int, SamplingParams, list[int]]]:
        """(index among ``rows``, params, output ids) of the sampling rows whose logits get edited.

        ``num_drafts_before``: per row, how many draft tokens precede its position (a request
        verifying drafts has one row per position); they count as outputs.
        """
        if not self.logits_processed:
            return []
        ends = self._output_ends(rows, num_drafts_before)
        out = []
        for i, row in enumerate(rows.tolist()):
            req_id = self.req_ids[row]
            if req_id in self.logits_processed:
                params = self.params[req_id]
                outputs = (self.token_ids[row, self.num_prompt_tokens[row]:ends[i]].tolist()
                           if params._bad_words_token_ids else [])
                out.append((i, params, outputs))
        return out

    def sampling_metadata(self, rows: np.ndarray, num_drafts_before: np.ndarray | None = None) -> SamplingMetadata:
        """Tensors for the rows that sample this step, in that order (``num_drafts_before``: as
        in ``logits_processing_rows``)."""
        ends = self._output_ends(rows, num_drafts_before)
        temperature = self.temperature[rows]
        greedy = temperature < _EPS
        req_ids = [self.req_ids[r] for r in rows]

        def tensor(values: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(values).to(self.device)

        def optional(values: np.ndarray, neutral: float) -> torch.Tensor | None:
            return tensor(values) if (values != neutral).any() else None

        md = SamplingMetadata(
            temperature=tensor(temperature),
            all_greedy=bool(greedy.all()),
            all_random=not greedy.any(),
            top_p=optional(self.top_p[rows], 1.0),
            top_k=optional(self.top_k[rows], 0),
            min_p=optional(self.min_p[rows], 0.0),
            generators={i: self.generators[r] for i, r in enumerate(req_ids) if r in self.generators},
            max_num_logprobs=int(self.num_logprobs[rows].max()) if (self.num_logprobs[rows] >= 0).any() else None,
        )
        presence, frequency, repetition = self.presence[rows], self.frequency[rows], self.repetition[rows]
        if (presence != 0).any() or (frequency != 0).any() or (repetition != 1).any():
            md.presence_penalties = tensor(presence)
            md.frequency_penalties = tensor(frequency)
            md.repetition_penalties = tensor(repetition)
            md.prompt_token_ids = [self.token_ids[r, :self.num_prompt_tokens[r]].tolist() for r in rows]
            md.output_token_ids = [self.token_ids[r, self.num_prompt_tokens[r]:end].tolist()
                                   for r, end in zip(rows, ends)]
        num_outputs = ends - self.num_prompt_tokens[rows]
        for i in np.nonzero(num_outputs < self.min_tokens[rows])[0].tolist():
            md.min_tokens_banned[i] = sorted(self.params[req_ids[i]].all_stop_token_ids)
        return md

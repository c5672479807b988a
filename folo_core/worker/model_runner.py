"""The model runner: one flat, unpadded batch per step through the model and sampler.

Each step it applies the scheduler's decision to its persistent ``InputBatch``,
builds token ids, positions, slot mapping, query start locations, sequence
lengths and block tables with vectorised numpy (``flat_batch.py``), builds the
attention metadata once, runs the model, and samples only at the last scheduled token of each
request that has caught up with its tokens. A request verifying draft tokens samples at each of
its draft positions and the one after; the rejection sampler keeps the drafts the target
distribution agrees with. After sampling, the proposer (if configured) drafts the next step's tokens.
"""

from __future__ import annotations

import math
import mmap
import os
from collections import Counter

import numpy as np
import torch

from folo_core.attention.backend import AttentionBackend
from folo_core.attention.layer import Attention
from folo_core.compilation import CompiledForward
from folo_core.config import EngineConfig
from folo_core.forward_context import set_forward_context
from folo_core.hf_utils import dynamic_rope_scaling
from folo_core.kernels import cpu_linear
from folo_core.logger import init_logger
from folo_core.models import ModelLoadContext, ModelLoader
from folo_core.quantization import QuantizationConfig, WeightMemory, quantized_layers, weight_memory
from folo_core.sample.interface import Sampler
from folo_core.sample.logits_processors import apply_logits_processors
from folo_core.sample.logprobs import compute_logprobs
from folo_core.sched.output import LogprobsEntry, ModelRunnerOutput, SchedulerOutput
from folo_core.spec_decode.proposer import Proposer
from folo_core.spec_decode.rejection_sampler import rejection_sample
from folo_core.structured_output.bitmask import apply_token_bitmask
from folo_core.utils import cdiv
from folo_core.worker.flat_batch import FlatBatch, build_flat_batch
from folo_core.worker.input_batch import InputBatch

logger = init_logger(__name__)

_CPU_KV_CACHE_CAP = 4 << 30
_PROMPT_LOGPROBS_CHUNK = 256  # prompt positions per logits matrix


def _available_host_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zeroed tensor; on CPU an anonymous mapping, so untouched KV blocks cost no time or RSS.
    Not numpy's calloc: numpy advises huge pages for large arrays, and a huge page's first
    touch in a decode step (zeroing 2 MiB, compacting memory) cost about 5 ms on a 2-core VM,
    6x more per byte than 4 KiB pages (about 10% of a 128-request SmolLM2 step)."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if nbytes == 0:
        return torch.zeros(shape, dtype=dtype)
    # MAP_PRIVATE: a forked process gets copy-on-write pages, as with any heap memory.
    return torch.frombuffer(mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE), dtype=dtype).view(shape)


class ModelRunner:
    def __init__(self, config: EngineConfig, attn_backend: type[AttentionBackend], sampler: Sampler,
                 model_loader: ModelLoader, quant_config: QuantizationConfig | None = None,
                 proposer: Proposer | None = None) -> None:
        self.config = config
        self.device = torch.device(config.model.resolved_device())
        self.dtype = config.model.torch_dtype
        self.block_size = config.cache.block_size
        self.max_model_len = config.model.max_model_len
        # Dynamic NTK rotary: each position goes to the model with its sequence length.
        self.positions_with_lengths = dynamic_rope_scaling(config.model.hf_config) is not None
        self.attn_backend = attn_backend
        self.sampler = sampler
        self.proposer = proposer
        torch.manual_seed(config.model.seed)
        logger.info("loading %s (%s, %s)", config.model.model, config.model.dtype, self.device)
        self.model = model_loader(ModelLoadContext(
            model_path=config.model.model, hf_config=config.model.hf_config, dtype=self.dtype,
            device=self.device, attn_backend=attn_backend, quant_config=quant_config))
        self.weight_memory: WeightMemory = weight_memory(self.model, self.dtype)
        self._log_weights()
        self.attn_layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        self.attn_layers_by_name = {layer.prefix: layer for layer in self.attn_layers}
        # Linears on oneDNN's opaque packed weights, which a compiled graph reaches by name.
        self.opaque_linears = {name: module for name, module in self.model.named_modules()
                               if getattr(module, "linear_kernel", None) == cpu_linear.ONEDNN}
        for name, module in self.opaque_linears.items():
            module.linear_name = name
        self.forward = CompiledForward(self.model)
        self.attn_metadata_builder = attn_backend.get_builder_cls()(attn_backend, self.device,
                                                                    config.model.enforce_eager)
        self.input_batch: InputBatch | None = None
        self.num_blocks = 0

    def _log_weights(self) -> None:
        """One line: weight memory and, if any, how quantized linears run (their kernels)."""
        memory = self.weight_memory
        methods = Counter(layer.quant_method.describe() for layer in quantized_layers(self.model))
        if not methods:
            logger.info("model weights: %.1f MiB", memory.total_bytes / 2**20)
            return
        logger.info("model weights: %.1f MiB; quantized linears: %.1f MiB (%.1f%% of %.1f MiB unquantized); %s",
                    memory.total_bytes / 2**20, memory.quantized_bytes / 2**20, 100 * memory.quantized_ratio,
                    memory.quantized_dense_bytes / 2**20,
                    ", ".join(f"{count} x {name}" for name, count in sorted(methods.items())))

    # -- KV cache -----------------------------------------------------------

    def kv_cache_block_bytes(self) -> int:
        """Bytes one block takes across all layers."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        total = 0
        for layer in self.attn_layers:
            shape = self.attn_backend.get_kv_cache_shape(1, self.block_size, layer.num_kv_heads, layer.head_size)
            total += int(np.prod(shape)) * itemsize
        return total

    def determine_num_blocks(self) -> int:
        cache = self.config.cache
        if cache.num_gpu_blocks_override is not None:
            return cache.num_gpu_blocks_override
        block_bytes = self.kv_cache_block_bytes()
        budget = cache.kv_cache_memory_bytes
        if budget is None:
            if self.device.type == "cuda":
                total = torch.cuda.get_device_properties(self.device).total_memory
                budget = int(total * cache.gpu_memory_utilization) - torch.cuda.memory_allocated(self.device)
            else:
                budget = min(_CPU_KV_CACHE_CAP, int(_available_host_memory() * 0.4))
            # No point holding more than every running request at full length needs.
            useful = self.config.scheduler.max_num_seqs * cdiv(self.max_model_len, self.block_size) * block_bytes
            budget = min(budget, useful)
        num_blocks = budget // block_bytes
        if num_blocks < 1:
            raise ValueError(f"kv_cache_memory_bytes={budget} is smaller than one KV block ({block_bytes} bytes)")
        return int(num_blocks)

    def initialize_kv_cache(self, num_blocks: int) -> None:
        """Allocate every layer's cache once and bind it to the layer."""
        self.num_blocks = num_blocks
        for layer in self.attn_layers:
            shape = self.attn_backend.get_kv_cache_shape(num_blocks, self.block_size, layer.num_kv_heads,
                                                         layer.head_size)
            layer.kv_cache = zeros(shape, self.dtype, self.device)
        self.input_batch = InputBatch(
            max_num_reqs=self.config.scheduler.max_num_seqs,
            max_model_len=self.max_model_len,
            max_blocks_per_req=cdiv(self.max_model_len, self.block_size),
            device=self.device,
        )
        logger.info("KV cache: %d blocks of %d tokens (%.1f MiB)", num_blocks, self.block_size,
                    num_blocks * self.kv_cache_block_bytes() / 2**20)
        if not self.config.model.enforce_eager:
            self.forward.warm_up(self._warm_up_batches)

    @torch.inference_mode()  # as execute_model: grad mode is part of what a compiled graph guards on
    def _warm_up_batches(self, forward) -> None:
        """Run the shapes a compiled graph must cover: a multi-token prefill, a decode batch
        (which also builds the backend's own compiled kernels) and a single token.

        The dummy tokens write KV into the first blocks; a block's slots are always written
        by the request that owns it before that request reads them, so this leaves no trace.
        """
        max_len = min(self.max_model_len, self.num_blocks * self.block_size)
        num_decode = min(8, self.config.scheduler.max_num_seqs)
        decode_context = min(128, max_len - 1)
        for computed, scheduled in (([0], [min(2, max_len)]),
                                    ([decode_context] * num_decode, [1] * num_decode),
                                    ([min(1, max_len - 1)], [1])):
            computed, scheduled = np.array(computed), np.array(scheduled)
            num_blocks = cdiv(int((computed + scheduled).max()), self.block_size)
            table = np.tile(np.arange(num_blocks, dtype=np.int32), (len(computed), 1))
            flat = build_flat_batch(computed, scheduled, table, np.arange(len(computed)), self.block_size,
                                    self.device)
            self._run_model(forward, flat, np.zeros(len(flat.positions), dtype=np.int64), computed + scheduled)

    # -- one step ---------------------------------------------------------------

    def _update_states(self, so: SchedulerOutput) -> dict[str, str]:
        """Apply the decision to the batch; returns the requests that could not join it, with why.

        Each request is taken in on its own, so a value that fails (say, in a third-party
        sampler's metadata) fails that request alone and the step runs without it.
        """
        batch = self.input_batch
        for req_id in so.finished_req_ids:
            batch.remove_request(req_id)
        for req_id in so.preempted_req_ids:
            batch.remove_request(req_id, preempted=True)
        failed: dict[str, str] = {}
        for data in so.scheduled_new_reqs:
            batch.remove_request(data.req_id, preempted=True)  # a row left by a failed step
            try:
                batch.add_request(data)
            except Exception as exc:
                batch.remove_request(data.req_id)
                failed[data.req_id] = f"cannot add the request to the batch: {type(exc).__name__}: {exc}"
        for data in so.scheduled_cached_reqs:
            try:
                row = batch.req_id_to_index[data.req_id]
                batch.num_computed_tokens[row] = data.num_computed_tokens
                batch.append_blocks(row, data.new_block_ids, data.num_blocks)
            except Exception as exc:
                batch.remove_request(data.req_id)
                failed[data.req_id] = f"cannot update the request in the batch: {type(exc).__name__}: {exc}"
        return failed

    @torch.inference_mode()
    def execute_model(self, so: SchedulerOutput) -> ModelRunnerOutput:
        failed = self._update_states(so)
        req_ids = [r for r in so.num_scheduled_tokens if r not in failed]
        if not req_ids:
            return ModelRunnerOutput(sampled_token_ids={}, failed_req_ids=failed)
        batch = self.input_batch
        rows = np.fromiter((batch.req_id_to_index[r] for r in req_ids), dtype=np.int64, count=len(req_ids))
        num_sched = np.fromiter((so.num_scheduled_tokens[r] for r in req_ids), dtype=np.int64, count=len(req_ids))

        spec = so.scheduled_spec_decode_tokens
        num_drafts = np.zeros(len(req_ids), dtype=np.int64)
        for i, req_id in enumerate(req_ids):
            if req_id in spec:
                num_drafts[i] = len(spec[req_id])
                batch.write_draft_tokens(int(rows[i]), spec[req_id])

        computed = batch.num_computed_tokens[rows]
        flat = build_flat_batch(computed, num_sched, batch.block_table, rows, self.block_size, self.device)
        input_ids = batch.token_ids[rows[flat.token_req], flat.positions]
        samples = computed + num_sched >= batch.num_tokens[rows] + num_drafts
        # One logits row per draft position and one after: [r0 drafts..., r0 next, r1 ...].
        counts = num_drafts[samples] + 1
        offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        logits_indices = np.repeat((np.cumsum(num_sched) - 1)[samples] - counts + 1, counts) + offsets

        hidden = self._run_model(self.forward, flat, input_ids, batch.num_prompt_tokens[rows])
        prompt_logprobs = self._prompt_logprobs(hidden, req_ids, rows, computed, num_sched)
        if not len(logits_indices):
            return ModelRunnerOutput(sampled_token_ids={}, failed_req_ids=failed, prompt_logprobs=prompt_logprobs)
        logits = self.model.compute_logits(hidden[torch.from_numpy(logits_indices).to(self.device)]).float()
        sample_rows = rows[samples]
        verifying = bool(spec) and bool((counts > 1).any())
        logit_rows = np.repeat(sample_rows, counts) if verifying else sample_rows
        drafts_before = offsets if verifying else None
        edits = batch.logits_processing_rows(logit_rows, drafts_before)
        if edits:
            apply_logits_processors(logits, edits)
        if so.grammar_bitmask is not None:  # last: a grammar's ban outranks any bias
            self._apply_grammar_bitmask(logits, so, logit_rows, offsets)
        md = batch.sampling_metadata(logit_rows, drafts_before)
        if verifying:
            result = self._verify(sample_rows, logits, md, [spec.get(batch.req_ids[r], []) for r in sample_rows])
        else:
            result = self._collect(sample_rows, self.sampler(logits, md))
        result.failed_req_ids, result.prompt_logprobs = failed, prompt_logprobs
        if self.proposer is not None:
            result.spec_token_ids = self._propose(sample_rows, len(req_ids))
        return result

    def _verify(self, sample_rows: np.ndarray, logits: torch.Tensor, md, drafts: list[list[int]]) -> ModelRunnerOutput:
        """Rejection-sample each request's drafts against the sampler's target distribution."""
        batch = self.input_batch
        generators = {i: batch.generators[batch.req_ids[r]] for i, r in enumerate(sample_rows.tolist())
                      if batch.req_ids[r] in batch.generators}
        emitted = rejection_sample(self.sampler.target_probs(logits, md), drafts, generators)
        result = ModelRunnerOutput(sampled_token_ids={})
        want = batch.num_logprobs[sample_rows]
        if (want >= 0).any():  # logprobs of each emitted token, from its position's logits
            rows_per_request = np.array([len(d) + 1 for d in drafts])
            starts = np.cumsum(rows_per_request) - rows_per_request
            positions = torch.tensor([int(s) + j for s, tokens in zip(starts, emitted) for j in range(len(tokens))])
            tokens = torch.tensor([t for tokens in emitted for t in tokens])
            ids, lps, ranks = (t.tolist() for t in compute_logprobs(logits[positions], tokens, int(want.max())))
        flat = 0
        for i, (row, tokens) in enumerate(zip(sample_rows.tolist(), emitted)):
            req_id = batch.req_ids[row]
            for token in tokens:
                batch.append_token(row, token)
            result.sampled_token_ids[req_id] = tokens
            if want[i] >= 0:
                k = int(want[i]) + 1
                result.logprobs[req_id] = [LogprobsEntry(ids[j][:k], lps[j][:k], ranks[j][:k])
                                           for j in range(flat, flat + len(tokens))]
            flat += len(tokens)
        return result

    def _propose(self, sample_rows: np.ndarray, batch_size: int) -> dict[str, list[int]]:
        """Drafts for the next step of each request that sampled (none from ``disable_by_batch_size`` up)."""
        limit = self.proposer.config.disable_by_batch_size
        if limit is not None and batch_size >= limit:
            return {}
        batch = self.input_batch
        rows = sample_rows.tolist()
        drafts = self.proposer.propose([batch.token_ids[r, :batch.num_tokens[r]] for r in rows])
        return {batch.req_ids[r]: d for r, d in zip(rows, drafts) if d}

    def _prompt_logprobs(self, hidden: torch.Tensor, req_ids: list[str], rows: np.ndarray, computed: np.ndarray,
                         num_sched: np.ndarray) -> dict[str, tuple[int, list[LogprobsEntry]]]:
        """For requests with ``prompt_logprobs``: each prompt token of this chunk (after the first
        of the prompt), its logprob given the tokens before it, its rank and the top-k."""
        batch = self.input_batch
        out: dict[str, tuple[int, list[LogprobsEntry]]] = {}
        if not batch.prompt_logprobs:  # the usual step: nothing to do
            return out
        starts = np.cumsum(num_sched) - num_sched
        for i, req_id in enumerate(req_ids):
            if req_id not in batch.prompt_logprobs:
                continue
            k = batch.params[req_id].prompt_logprobs
            row, first = int(rows[i]), int(computed[i])
            end = min(first + int(num_sched[i]), int(batch.num_prompt_tokens[row]) - 1)  # the next token is prompt
            if end <= first:
                continue
            entries: list[LogprobsEntry] = []
            for lo in range(first, end, _PROMPT_LOGPROBS_CHUNK):  # bounds the [tokens, vocab] logits
                hi = min(end, lo + _PROMPT_LOGPROBS_CHUNK)
                flat = torch.arange(int(starts[i]) + lo - first, int(starts[i]) + hi - first, device=self.device)
                logits = self.model.compute_logits(hidden[flat]).float()
                targets = torch.from_numpy(batch.token_ids[row, lo + 1:hi + 1]).to(self.device)
                ids, lps, ranks = (t.tolist() for t in compute_logprobs(logits, targets, k))
                entries.extend(LogprobsEntry(*entry) for entry in zip(ids, lps, ranks))
            out[req_id] = (first + 1, entries)
        return out

    def _apply_grammar_bitmask(self, logits: torch.Tensor, so: SchedulerOutput, logit_rows: np.ndarray,
                               drafts_before: np.ndarray) -> None:
        """Ban what each structured request's grammar does not allow, before any sampling step
        (penalties, temperature, top-k/p) sees the logits: a banned token is never sampled.
        A draft position's row takes the bitmask row of its position."""
        first = so.structured_output_request_ids
        req_ids = [self.input_batch.req_ids[r] for r in logit_rows]
        pairs = [(i, first[req_id] + int(drafts_before[i])) for i, req_id in enumerate(req_ids) if req_id in first]
        if pairs:
            logit_rows, mask_rows = zip(*pairs)
            apply_token_bitmask(logits, so.grammar_bitmask[list(mask_rows)],
                                torch.tensor(logit_rows, device=logits.device),
                                compiled=not self.config.model.enforce_eager)

    def _run_model(self, forward, flat: FlatBatch, input_ids: np.ndarray, prompt_lens: np.ndarray) -> torch.Tensor:
        """One forward over the flat batch, with its attention metadata built once."""
        attn_metadata = self.attn_metadata_builder.build(flat.attn_metadata)
        with set_forward_context(attn_metadata, self.attn_layers_by_name, self.opaque_linears):
            return forward(torch.from_numpy(input_ids).to(self.device),
                           torch.from_numpy(self._model_positions(flat, prompt_lens)).to(self.device))

    def _model_positions(self, flat: FlatBatch, prompt_lens: np.ndarray) -> np.ndarray:
        """[T] positions; under dynamic NTK rotary [2, T], each with the sequence length HF's
        rotation would see for it: its prompt's length, or, for a generated token, its position + 1
        (a token's rotation is fixed when its key is cached, so it must not depend on the step)."""
        if not self.positions_with_lengths:
            return flat.positions
        return np.stack([flat.positions, np.maximum(prompt_lens[flat.token_req], flat.positions + 1)])

    def _collect(self, sample_rows: np.ndarray, out) -> ModelRunnerOutput:
        batch = self.input_batch
        tokens = out.sampled_token_ids.tolist()
        result = ModelRunnerOutput(sampled_token_ids={})
        want = batch.num_logprobs[sample_rows]
        if out.logprobs is not None:
            lp_ids, lps, ranks = out.logprob_token_ids.tolist(), out.logprobs.tolist(), out.ranks.tolist()
        for i, (row, token) in enumerate(zip(sample_rows.tolist(), tokens)):
            req_id = batch.req_ids[row]
            batch.append_token(row, token)
            result.sampled_token_ids[req_id] = [token]
            if want[i] >= 0:
                k = int(want[i]) + 1
                result.logprobs[req_id] = [LogprobsEntry(lp_ids[i][:k], lps[i][:k], ranks[i][:k])]
        return result

"""The flat batch arithmetic of one step: where each scheduled token sits.

Shared by the model runner and the attention conformance kit
(``folo_core.testing``), so a backend is tested on exactly the metadata the
engine hands it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from folo_core.attention.backend import CommonAttentionMetadata
from folo_core.utils import cdiv


@dataclass
class FlatBatch:
    attn_metadata: CommonAttentionMetadata
    token_req: np.ndarray  # [num_tokens]: index (in this step) of each token's request
    positions: np.ndarray  # [num_tokens]: position of each token in its request


def build_flat_batch(
    num_computed_tokens: np.ndarray,  # [num_reqs]: tokens already in the KV cache
    num_scheduled_tokens: np.ndarray,  # [num_reqs]: new tokens this step (>= 1 each)
    block_table: np.ndarray,  # int32 [*, max_blocks_per_req]: persistent table, one row per request
    rows: np.ndarray,  # [num_reqs]: each request's row in ``block_table``
    block_size: int,
    device: torch.device,
) -> FlatBatch:
    """Positions and the common attention metadata of one flat, unpadded step."""
    cu = np.cumsum(num_scheduled_tokens)
    starts = cu - num_scheduled_tokens
    token_req = np.repeat(np.arange(len(rows)), num_scheduled_tokens)
    positions = num_computed_tokens[token_req] + (np.arange(cu[-1]) - starts[token_req])
    seq_lens = num_computed_tokens + num_scheduled_tokens
    max_blocks = cdiv(int(seq_lens.max()), block_size)
    step_block_table = block_table[rows, :max_blocks]
    slot_mapping = (step_block_table[token_req, positions // block_size].astype(np.int64) * block_size
                    + positions % block_size)

    query_start_loc = torch.from_numpy(np.concatenate([[0], cu]).astype(np.int32))
    seq_lens_t = torch.from_numpy(seq_lens.astype(np.int32))
    metadata = CommonAttentionMetadata(
        query_start_loc=query_start_loc.to(device),
        query_start_loc_cpu=query_start_loc,
        seq_lens=seq_lens_t.to(device),
        seq_lens_cpu=seq_lens_t,
        num_computed_tokens_cpu=torch.from_numpy(num_computed_tokens.astype(np.int32)),
        block_table=torch.from_numpy(step_block_table).to(device),
        slot_mapping=torch.from_numpy(slot_mapping).to(device),
        num_reqs=len(rows),
        num_actual_tokens=int(cu[-1]),
        max_query_len=int(num_scheduled_tokens.max()),
        max_seq_len=int(seq_lens.max()),
        block_size=block_size,
    )
    return FlatBatch(metadata, token_req, positions)

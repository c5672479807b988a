"""This process's tensor-parallel rank and the collectives the sharded layers use.

A worker of a tensor-parallel executor calls ``init_tensor_parallel`` before it
builds its model; everywhere else the group is absent, the rank is 0 of 1 and
every collective is the identity, so single-process code pays nothing. gloo
serves CPUs, nccl CUDA. The collectives are graph-opaque ops
(``torch.ops.folo.all_reduce``), so a compiled forward holds them without a break.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from folo_core.kernels.ops import define_op

_TP_SIZE = 1
_TP_RANK = 0


def init_tensor_parallel(rank: int, world_size: int, init_method: str, backend: str) -> None:
    """Join the group of ``world_size`` ranks (one per tensor-parallel shard)."""
    global _TP_SIZE, _TP_RANK
    # A bounded wait: a rank that died mid-step fails its peers' collectives instead of hanging them.
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))
    _TP_RANK, _TP_SIZE = rank, world_size


def get_tp_rank() -> int:
    return _TP_RANK


def get_tp_size() -> int:
    return _TP_SIZE


def _all_reduce(x: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    dist.all_reduce(out)
    return out


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(_TP_SIZE)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=-1)


def _fake_all_gather(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], x.shape[-1] * _TP_SIZE)


_all_reduce_op = define_op("all_reduce(Tensor x) -> Tensor", _all_reduce, lambda x: torch.empty_like(x))
_all_gather_op = define_op("all_gather(Tensor x) -> Tensor", _all_gather, _fake_all_gather)


def tensor_model_parallel_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over the ranks (``x`` itself with one rank)."""
    return x if _TP_SIZE == 1 else _all_reduce_op(x)


def tensor_model_parallel_all_gather(x: torch.Tensor) -> torch.Tensor:
    """The ranks' ``x`` concatenated along the last dimension, in rank order."""
    return x if _TP_SIZE == 1 else _all_gather_op(x)

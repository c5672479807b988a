"""Rotary position embedding with HF's frequency tables, one module for every ``rope_type``.

``default``, ``linear``, ``yarn``, ``llama3`` and the others HF computes once come
from ``transformers.modeling_rope_utils``; ``longrope`` (Phi-3) uses its short
factors for positions before ``original_max_position_embeddings`` and its long
factors from there on, per position, as vLLM does (HF switches a whole forward to
the long factors once it reaches past that length, which agrees for decoding but
not for a prefill that crosses it). ``dynamic`` (NTK) grows the base with the
sequence length past ``max_position_embeddings``, as HF does for one sequence: a
prompt's tokens turn with the base of the prompt's length, a generated token at
position ``p`` with that of ``p + 1``, so the runner passes positions as ``[2, T]``,
each position with that length (HF takes the longest sequence of its whole batch,
which no engine that batches requests independently can reproduce).
``partial_rotary_factor`` rotates only the first part of each head.
Configs whose ``rope_parameters`` are keyed by layer type (Gemma 3: one base for
sliding layers, another for full ones) get one table per type.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from folo_core.hf_utils import dynamic_rope_scaling
from folo_core.models import CheckpointError


def rope_layer_types(hf_config: Any) -> tuple[str, ...]:
    """The layer types ``rope_parameters`` is keyed by (empty when it is one set for all layers)."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    return tuple(k for k, v in params.items() if isinstance(v, dict))


def _rope_parameters(hf_config: Any, layer_type: str | None) -> dict[str, Any]:
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    return dict(params[layer_type]) if layer_type is not None else params


def _inv_freq(hf_config: Any, rotary_dim: int, layer_type: str | None, **kwargs: Any) -> tuple[torch.Tensor, float]:
    params = _rope_parameters(hf_config, layer_type)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        base = float(params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))
        exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
        return 1.0 / (base ** exponents), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise CheckpointError(f"unknown rope_type {rope_type!r}")
    if layer_type is not None:
        kwargs["layer_type"] = layer_type
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, torch.device("cpu"), **kwargs)
    return inv_freq.float(), float(scaling)


def _angles(hf_config: Any, rotary_dim: int, max_position: int, layer_type: str | None) -> tuple[torch.Tensor, float]:
    """[max_position, rotary_dim / 2] rotation angles and the cos/sin scaling."""
    positions = torch.arange(max_position, dtype=torch.float32)[:, None]
    params = _rope_parameters(hf_config, layer_type)
    inv_freq, scaling = _inv_freq(hf_config, rotary_dim, layer_type)
    angles = positions * inv_freq[None, :]
    if params.get("rope_type", params.get("type")) == "longrope":
        original = int(params.get("original_max_position_embeddings")
                       or getattr(hf_config, "original_max_position_embeddings", max_position))
        long_inv_freq, _ = _inv_freq(hf_config, rotary_dim, layer_type, seq_len=original + 1)
        angles[original:] = positions[original:] * long_inv_freq[None, :]
    return angles, scaling


def _dynamic_inv_freq(hf_config: Any, original: int, max_position: int) -> torch.Tensor:
    """[max_position - original + 1, rotary_dim / 2]: row i holds the inverse frequencies HF's
    dynamic NTK uses for a sequence of ``original + i`` tokens (row 0: up to ``original``)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    dynamic = ROPE_INIT_FUNCTIONS["dynamic"]
    first, _ = dynamic(hf_config, torch.device("cpu"))
    lengths = torch.arange(original + 1, max(max_position, original) + 1)[:, None]
    longer, _ = dynamic(hf_config, torch.device("cpu"), seq_len=lengths)  # HF's tensor path, row by row
    return torch.cat((first[None], longer)).float()


class RotaryEmbedding(nn.Module):
    """Neox-style rotation (``rotate_half``) with cos/sin tables indexed by position.

    The sin table is stored with its first half negated, so that
    ``rotate_half(x) * sin`` becomes ``swap_halves(x) * sin_signed``: one copy
    (``flip``) instead of chunk, neg and cat, with the same rounding as HF.
    """

    def __init__(self, hf_config: Any, head_dim: int, max_position: int, layer_type: str | None = None) -> None:
        super().__init__()
        factor = float(_rope_parameters(hf_config, layer_type).get("partial_rotary_factor", 1.0))
        self.rotary_dim = int(head_dim * factor)
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= head_dim:
            raise CheckpointError(f"partial_rotary_factor {factor} gives {self.rotary_dim} rotary dimensions "
                                  f"of {head_dim}; needs an even number, at least 2")
        self.dynamic = dynamic_rope_scaling(hf_config) if layer_type is None else None
        if self.dynamic is not None:  # angles per step from these: no table by position
            self.scaling = _inv_freq(hf_config, self.rotary_dim, layer_type)[1]
            self.register_buffer("dynamic_inv_freq", _dynamic_inv_freq(hf_config, self.dynamic[0], max_position),
                                 persistent=False)
            return
        angles, scaling = _angles(hf_config, self.rotary_dim, max_position, layer_type)
        self.scaling = scaling
        self.register_buffer("cos", torch.cat((angles, angles), dim=-1).cos() * scaling, persistent=False)
        sin = angles.sin() * scaling
        self.register_buffer("sin_signed", torch.cat((-sin, sin), dim=-1), persistent=False)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's tables, looked up once and shared by every layer: [T, 1, rotary_dim] each.
        Under dynamic NTK ``positions`` is [2, T] (positions, sequence lengths) and the angles are
        computed for the step from each length's frequencies (plain positions p count as length
        p + 1, a generated token's rule)."""
        if self.dynamic is None:
            return self.cos[positions].to(dtype).unsqueeze(1), self.sin_signed[positions].to(dtype).unsqueeze(1)
        positions, lengths = positions if positions.dim() == 2 else (positions, positions + 1)
        inv_freq = self.dynamic_inv_freq[(lengths - self.dynamic[0]).clamp(min=0)]
        angles = positions[:, None].float() * inv_freq
        cos, sin = angles.cos() * self.scaling, angles.sin() * self.scaling
        return (torch.cat((cos, cos), dim=-1).to(dtype).unsqueeze(1),
                torch.cat((-sin, sin), dim=-1).to(dtype).unsqueeze(1))

    @staticmethod
    def apply(cos_sin: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` [T, heads, D] (queries and keys together) by their positions' angles; with a
        partial rotary factor only its first ``rotary_dim`` features turn."""
        cos, sin_signed = cos_sin
        rotary_dim = cos.shape[-1]
        if rotary_dim < x.shape[-1]:
            turned = RotaryEmbedding.apply(cos_sin, x[..., :rotary_dim])
            return torch.cat((turned, x[..., rotary_dim:]), dim=-1)
        swapped = x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)
        return (x * cos).add_(swapped.mul_(sin_signed))

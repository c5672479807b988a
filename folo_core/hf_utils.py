"""transformers interop: read a checkpoint's config, tokenizer and EOS ids with clear errors.

Every transformers call passes ``trust_remote_code=False``: a checkpoint is data, and
its ``auto_map`` code (``configuration_*.py``, ``tokenization_*.py``) never runs, not
even when transformers would otherwise ask on stdin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from folo_core.models import CheckpointError


def load_hf_config(model_path: str) -> Any:
    path = Path(model_path)
    if not path.exists():
        raise CheckpointError(f"model path {model_path!r} does not exist")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"model path {model_path!r} has no config.json (not an HF checkpoint directory)")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_path, trust_remote_code=False)
    except Exception as exc:
        raise CheckpointError(f"cannot read {model_path}/config.json: {exc}") from None


def engine_tokenizer(model_config: Any) -> Any:
    """The tokenizer a ``ModelConfig`` (model path resolved) names, or None with ``skip_tokenizer_init``."""
    if model_config.skip_tokenizer_init:
        return None
    return load_tokenizer(model_config.tokenizer or model_config.model)


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:
        raise CheckpointError(
            f"cannot load a tokenizer from {path!r} ({exc}); pass tokenizer=PATH or skip_tokenizer_init=True"
        ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(f"the tokenizer in {path!r} is not a fast (tokenizers) tokenizer")
    return tokenizer


def _as_set(value: Any) -> set[int]:
    if value is None:
        return set()
    return {int(v) for v in value} if isinstance(value, (list, tuple, set)) else {int(value)}


def eos_token_ids(hf_config: Any, tokenizer: Any, model_path: str) -> frozenset[int]:
    """Every id that ends generation: the tokenizer's EOS plus the generation config's (vLLM)."""
    ids = _as_set(getattr(hf_config, "eos_token_id", None))
    if tokenizer is not None:
        ids |= _as_set(tokenizer.eos_token_id)
    if (Path(model_path) / "generation_config.json").is_file():
        from transformers import GenerationConfig

        ids |= _as_set(GenerationConfig.from_pretrained(model_path).eos_token_id)
    return frozenset(ids)


def layer_sliding_windows(hf_config: Any) -> tuple[int | None, ...]:
    """Each decoder layer's attention window in tokens (None: full attention), as HF applies it.

    A query at position ``i`` sees the keys at ``j`` with ``i - W < j <= i``. ``layer_types``
    (Gemma 2/3, Qwen2/3 with ``use_sliding_window``) names each layer's kind; without it a
    ``sliding_window`` (Mistral, Phi-3) applies to every layer. Any other layer kind is refused:
    running it as full attention would silently change the model.
    """
    num_layers = hf_config.num_hidden_layers
    window = getattr(hf_config, "sliding_window", None)
    layer_types = getattr(hf_config, "layer_types", None)
    if layer_types is None:
        return (window or None,) * num_layers
    if len(layer_types) != num_layers:
        raise CheckpointError(f"layer_types has {len(layer_types)} entries for {num_layers} layers")
    unknown = sorted(set(layer_types) - {"full_attention", "sliding_attention"})
    if unknown:
        raise CheckpointError(f"layer type(s) {unknown} are not supported (only full_attention, sliding_attention)")
    if "sliding_attention" in layer_types and not window:
        raise CheckpointError("layer_types has sliding_attention layers but sliding_window is not set")
    return tuple(window if kind == "sliding_attention" else None for kind in layer_types)


def kv_sliding_window(windows: tuple[int | None, ...]) -> int | None:
    """The window after which a token's KV is dead in every layer (None if any layer is full)."""
    return None if not windows or None in windows else max(windows)


def dynamic_rope_scaling(hf_config: Any) -> tuple[int, float] | None:
    """``(original length, factor)`` for HF's "dynamic" NTK rotary scaling, else None.

    Its base grows with the sequence length past ``max_position_embeddings``, so a token's
    rotation depends on how long the sequence was when it was computed: the model runner
    passes that length with each position, and prefix caching keys long prompts by their
    length. Within the original length it is the default rotary embedding.
    """
    params = getattr(hf_config, "rope_parameters", None) or {}
    if any(isinstance(v, dict) and v.get("rope_type") == "dynamic" for v in params.values()):
        raise CheckpointError("rope_type 'dynamic' per layer type is not supported")
    if params.get("rope_type", params.get("type")) != "dynamic":
        return None
    factor = float(params.get("factor", 1.0))
    if factor < 1.0:
        raise CheckpointError(f"dynamic rope factor {factor} must be at least 1")
    return int(hf_config.max_position_embeddings), factor


def max_positions(hf_config: Any) -> int | None:
    """The longest sequence the checkpoint's positions cover: ``max_position_embeddings``,
    times the factor under dynamic NTK scaling (what it is for; vLLM's limit too)."""
    limit = getattr(hf_config, "max_position_embeddings", None)
    dynamic = dynamic_rope_scaling(hf_config)
    return int(dynamic[0] * dynamic[1]) if dynamic and limit is not None else limit

"""Sliding-window attention in the decoder, the backends and the paged KV manager, against HF.

Mistral windows every layer; Qwen2 with ``use_sliding_window`` windows the layers from
``max_window_layers`` on and keeps the others full (per-layer windows, as Gemma alternates
them). Windows are shorter than the prompts, so the window changes the outputs.
"""

from __future__ import annotations

import pytest

from folo_core import SamplingParams
from folo_core.attention.backend import AttentionCapabilities
from folo_core.config import EngineConfig
from folo_core.engine.llm_engine import LLMEngine
from folo_core.hf_utils import kv_sliding_window, layer_sliding_windows
from folo_core.hookspecs import hookimpl
from folo_core.models import CheckpointError
from folo_core.plugins import FoloPluginManager, PluginInfo
from folo_core.registry import PluginSelectionError
from folo_core.request import Request
from folo_plugins.paged.attention import PagedSDPABackend
from folo_plugins.paged.kv_cache_manager import PagedKVCacheManager
from helpers import assert_greedy_matches_hf, assert_prefill_logprobs_match_hf, hf_greedy, random_prompts

GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
MODELS = {
    "mistral": ("mistral", {}),
    "mistral-gqa1-window5": ("mistral", dict(num_key_value_heads=1, sliding_window=5, head_dim=32)),
    "qwen2-mixed": ("qwen2", dict(use_sliding_window=True, sliding_window=9, max_window_layers=1)),
}
OPTIONS = [
    dict(attention_backend="naive", enable_prefix_caching=False),
    dict(attention_backend="paged", max_num_batched_tokens=32, enable_prefix_caching=True, block_size=8),
]


@pytest.fixture(params=list(MODELS))
def windowed_model(request, tiny_model_dir):
    kind, overrides = MODELS[request.param]
    return tiny_model_dir(kind, **overrides)


@pytest.mark.parametrize("options", OPTIONS, ids=["naive", "paged-chunked-prefix"])
def test_greedy_matches_hf(windowed_model, options):
    prompts = random_prompts(8, 512, seed=21, min_len=1, max_len=70)
    prompts[1] = prompts[0][:40] + prompts[1][:10]  # a shared prefix for the prefix cache
    assert_greedy_matches_hf(windowed_model, prompts, GREEDY.max_tokens, **options)


def test_the_window_matters(tiny_model_dir):
    """The same weights without the window give other tokens: the tests above would catch a
    backend that ignored it."""
    prompts = random_prompts(4, 512, seed=21, min_len=40, max_len=70)
    windowed = hf_greedy(tiny_model_dir("mistral"), prompts, GREEDY.max_tokens)
    full = hf_greedy(tiny_model_dir("mistral", sliding_window=None), prompts, GREEDY.max_tokens)
    assert windowed != full


def test_prefill_logprobs_match_hf(windowed_model):
    prompt = random_prompts(1, 512, seed=17, min_len=30, max_len=30)[0]
    assert_prefill_logprobs_match_hf(windowed_model, prompt, max_num_batched_tokens=16, block_size=8,
                                     enable_prefix_caching=True)


def test_long_generation_keeps_kv_blocks_bounded_and_matches_hf(tiny_model_dir):
    """Past many windows, a fully windowed model holds about window / block_size blocks."""
    path = tiny_model_dir("mistral")  # window 12
    block_size, max_tokens = 4, 150
    prompt = random_prompts(1, 512, seed=5, min_len=20, max_len=20)[0]
    engine = LLMEngine.from_engine_args(model=str(path), skip_tokenizer_init=True, dtype="float32",
                                        block_size=block_size, enforce_eager=True)
    engine.add_request("r", {"prompt_token_ids": prompt}, SamplingParams(temperature=0, max_tokens=max_tokens,
                                                                         ignore_eos=True))
    core = engine.engine_core
    most_in_use, token_ids = 0, []
    while engine.has_unfinished_requests():
        for output in engine.step():
            token_ids = output.outputs[0].token_ids
        most_in_use = max(most_in_use, core.num_blocks - core.kv_cache_manager.num_free_blocks)
    # The window's 12 tokens span at most 4 blocks of 4, plus the block the next token goes to.
    assert most_in_use <= 12 // block_size + 2, most_in_use
    assert (len(prompt) + max_tokens) // block_size > 3 * most_in_use  # without freeing: 42 blocks
    assert list(token_ids) == hf_greedy(path, [prompt], max_tokens)[0]
    assert core.kv_cache_manager.num_free_blocks == core.num_blocks  # nothing leaked


def _request(n: int) -> Request:
    return Request("r", list(range(n)), SamplingParams(), max_tokens=50)


def test_manager_gives_back_blocks_before_the_window_and_keeps_their_places():
    manager = PagedKVCacheManager(num_blocks=20, block_size=4, sliding_window=6)
    request = _request(10)
    assert manager.allocate_slots(request, 10) is not None  # 3 blocks, nothing computed yet
    request.num_computed_tokens = 10
    manager.allocate_slots(request, 1)  # the token at 10 sees 5..10: block 0 (0..3) is dead
    ids = manager.get_block_ids("r")
    assert len(ids) == 3 and manager.num_free_blocks == 20 - 2
    request.num_computed_tokens = 11
    manager.allocate_slots(request, 2)  # tokens at 11, 12 see from 6: block 1 (4..7) still live
    assert manager.num_free_blocks == 20 - 3
    manager.free(request)
    assert manager.num_free_blocks == 20


def test_mixed_layers_keep_every_block():
    """With one full layer, no block ever falls out of every layer's window."""
    class Cfg:
        num_hidden_layers = 3
        sliding_window = 8
        layer_types = ["sliding_attention", "full_attention", "sliding_attention"]

    assert layer_sliding_windows(Cfg) == (8, None, 8)
    assert kv_sliding_window(layer_sliding_windows(Cfg)) is None
    Cfg.layer_types = ["sliding_attention"] * 3
    assert kv_sliding_window(layer_sliding_windows(Cfg)) == 8


def test_unknown_layer_types_are_refused():
    class Cfg:
        num_hidden_layers = 2
        sliding_window = 8
        layer_types = ["full_attention", "chunked_attention"]

    with pytest.raises(CheckpointError, match="chunked_attention"):
        layer_sliding_windows(Cfg)


class _NoWindow(PagedSDPABackend):
    name = "no_window"
    capabilities = AttentionCapabilities()  # sliding_window=False, the default


class _NoWindowPlugin:
    @staticmethod
    @hookimpl
    def register_attention_backends(register):
        register(_NoWindow.name, _NoWindow, priority=1000)


def _engine(path, backend: str) -> LLMEngine:
    manager = FoloPluginManager()
    manager.load_entry_points()
    manager.register(_NoWindowPlugin(), PluginInfo("no-window"))
    config = EngineConfig.from_kwargs(model=str(path), dtype="float32", skip_tokenizer_init=True,
                                      num_gpu_blocks_override=8, attention_backend=backend)
    return LLMEngine(config, plugins=manager)


def test_a_backend_without_windows_is_refused_with_the_reason(tiny_model_dir):
    """A windowed model never runs silently as full attention."""
    with pytest.raises(PluginSelectionError, match="sliding-window attention is not supported"):
        _engine(tiny_model_dir("mistral"), "no_window")
    assert _engine(tiny_model_dir("mistral"), "auto").engine_core.selected.attention_backend == "paged"
    # Where the model has no window, the same backend is picked: the refusal above is the window's.
    assert _engine(tiny_model_dir("llama"), "auto").engine_core.selected.attention_backend == "no_window"

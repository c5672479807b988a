"""Broken GPTQ checkpoints fail at load, naming the tensor or the config field."""

from __future__ import annotations

import pytest
import torch

from folo_core import LLM
from folo_core.models import CheckpointError
from gptq_helpers import copy_checkpoint, edit_quantization_config, edit_tensors

ACT_ORDER = "qwen3-g32-act-asym"


@pytest.fixture
def broken(gptq_checkpoint, tmp_path):
    """A fresh copy of the act-order checkpoint to break."""
    return copy_checkpoint(gptq_checkpoint(ACT_ORDER), tmp_path / "broken")


def load(path) -> LLM:
    return LLM(str(path), skip_tokenizer_init=True)


def test_missing_g_idx_with_desc_act(broken):
    edit_tensors(broken, lambda t: t.pop("model.layers.1.mlp.down_proj.g_idx"))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\): model\.layers\.1\.mlp\.down_proj\.g_idx"):
        load(broken)


def test_wrong_qweight_shape(broken):
    def truncate(tensors):
        name = "model.layers.0.self_attn.o_proj.qweight"
        tensors[name] = tensors[name][:-1].contiguous()

    edit_tensors(broken, truncate)
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.self_attn\.o_proj\.qweight': shape \(15, 128\) "
                                              r"does not fit the expected \(16, 128\)"):
        load(broken)


def test_scales_for_another_group_size(broken):
    """Checkpoint written with group 64 but config saying 32: the scales' group count is off."""
    edit_quantization_config(broken, group_size=64)
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.[a-z_.]+\.(qzeros|scales)': shape \(8, \d+\) "
                                              r"does not fit the expected \(4, \d+\)"):
        load(broken)


def test_unsupported_bits(broken):
    edit_quantization_config(broken, bits=3)
    with pytest.raises(CheckpointError, match=r"quantization_config\.bits=3 is not supported"):
        load(broken)


def test_fused_shards_with_different_g_idx(broken):
    def shuffle(tensors):
        name = "model.layers.0.self_attn.v_proj.g_idx"
        tensors[name] = tensors[name].flip(0).contiguous()

    edit_tensors(broken, shuffle)
    with pytest.raises(CheckpointError, match=r"self_attn\.(q|k|v)_proj\.g_idx': fused shards disagree"):
        load(broken)


def test_g_idx_pointing_past_the_groups(broken):
    def overflow(tensors):
        for shard in ("gate", "up"):
            tensors[f"model.layers.1.mlp.{shard}_proj.g_idx"][0] = 99

    edit_tensors(broken, overflow)
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.gate_up_proj\.g_idx holds groups 0\.\.99, "
                                              r"but scales has 4"):
        load(broken)


def test_unquantized_weight_where_gptq_tensors_belong(broken):
    edit_tensors(broken, lambda t: t.update({"model.layers.0.mlp.down_proj.weight": torch.zeros(128, 256)}))
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.mlp\.down_proj\.weight' does not belong"):
        load(broken)

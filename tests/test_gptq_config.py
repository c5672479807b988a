"""GPTQConfig: which settings load, which fail (naming the field), which linears are quantized; packing."""

from __future__ import annotations

import pytest
import torch

from folo_core.models import CheckpointError
from folo_plugins.gptq.config import GPTQConfig
from folo_plugins.gptq.linear import GPTQLinearMethod
from folo_plugins.gptq.packing import decode_zeros, encode_zeros, pack_cols, pack_rows, unpack_cols, unpack_rows

BASE = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True,
        "checkpoint_format": "gptq"}


def test_reads_gptqmodel_and_autogptq_settings():
    scheme = GPTQConfig.from_config({**BASE, "group_size": -1, "desc_act": True, "sym": False,
                                     "checkpoint_format": "gptq_v2", "pack_dtype": "int32", "meta": {}}).scheme
    assert (scheme.bits, scheme.group_size, scheme.desc_act, scheme.sym, scheme.checkpoint_format) == \
        (4, -1, True, False, "gptq_v2")
    # AutoGPTQ's quantize_config.json: no quant_method, no checkpoint_format (v1 implied).
    legacy = GPTQConfig.from_config({"bits": 8, "group_size": 32, "desc_act": False, "sym": True}).scheme
    assert (legacy.bits, legacy.checkpoint_format) == (8, "gptq")
    # gptqmodel also writes the format as "format".
    assert GPTQConfig.from_config({**BASE, "checkpoint_format": None, "format": "gptq_v2"}).scheme.checkpoint_format \
        == "gptq_v2"


@pytest.mark.parametrize("changes, message", [
    ({"bits": 3}, "quantization_config.bits=3 is not supported (supported: 4, 8)"),
    ({"bits": None}, "quantization_config.bits=None must be int"),
    ({"bits": True}, "quantization_config.bits=True must be int"),
    ({"group_size": 0}, "quantization_config.group_size=0 must be -1 (a single group) or positive"),
    ({"desc_act": "yes"}, "quantization_config.desc_act='yes' must be bool"),
    ({"checkpoint_format": "marlin"}, "quantization_config.checkpoint_format='marlin' is not supported"),
    ({"pack_dtype": "int16"}, "quantization_config.pack_dtype='int16' is not supported"),
    ({"lm_head": True}, "quantization_config.lm_head=true"),
    ({"quant_method": "awq"}, "quantization_config.quant_method='awq' is not 'gptq'"),
    ({"dynamic": {r"+:.*down.*": {"damp_percent": 0.1}}}, "overrides ['damp_percent']"),
    ({"dynamic": {r"+:.*down.*": {"bits": 2}}}, "quantization_config.dynamic['+:.*down.*'].bits=2 is not supported"),
])
def test_unsupported_settings_name_the_field(changes, message):
    config = {**BASE, **changes}
    with pytest.raises(CheckpointError) as info:
        GPTQConfig.from_config(config).scheme_for("model.layers.0.mlp.down_proj")
    assert message in str(info.value)


def test_dynamic_rules_first_match_wins_and_minus_skips():
    config = GPTQConfig.from_config({**BASE, "dynamic": {
        r"-:model\.layers\.0\.self_attn\..*": {},
        r"+:.*\.mlp\.down_proj": {"bits": 8, "group_size": 32},
        r".*\.mlp\..*": {"sym": False},
    }})
    assert config.scheme_for("model.layers.0.self_attn.o_proj") is None
    assert config.scheme_for("model.layers.1.self_attn.o_proj") == config.scheme
    down = config.scheme_for("model.layers.1.mlp.down_proj")
    assert (down.bits, down.group_size, down.sym) == (8, 32, True)
    assert config.scheme_for("model.layers.1.mlp.up_proj").sym is False


def test_fused_layers_follow_their_checkpoint_modules():
    config = GPTQConfig.from_config({**BASE, "dynamic": {r"-:.*layers\.0\..*": {}, r"+:.*\.k_proj": {"bits": 8}}})
    assert config.get_quant_method(None, "model.layers.0.self_attn.qkv_proj") is None
    assert isinstance(config.get_quant_method(None, "model.layers.1.mlp.gate_up_proj"), GPTQLinearMethod)
    with pytest.raises(CheckpointError, match="model.layers.1.self_attn.q_proj, model.layers.1.self_attn.k_proj"):
        config.get_quant_method(None, "model.layers.1.self_attn.qkv_proj")


def test_modules_in_block_to_quantize_leaves_the_rest_unquantized():
    config = GPTQConfig.from_config({**BASE, "modules_in_block_to_quantize": [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["mlp.down_proj"]]})
    assert isinstance(config.get_quant_method(None, "model.layers.3.self_attn.qkv_proj"), GPTQLinearMethod)
    assert isinstance(config.get_quant_method(None, "model.layers.3.mlp.down_proj"), GPTQLinearMethod)
    assert config.get_quant_method(None, "model.layers.3.mlp.gate_up_proj") is None
    assert config.get_quant_method(None, "model.layers.3.self_attn.o_proj") is None


@pytest.mark.parametrize("bits", [4, 8])
def test_pack_unpack_round_trip(bits):
    codes = torch.randint(0, 2**bits, (64, 48), dtype=torch.int32)
    assert torch.equal(unpack_rows(pack_rows(codes, bits), bits), codes)
    assert torch.equal(unpack_cols(pack_cols(codes, bits), bits), codes)
    # Row r of qweight holds input rows pf*r .. pf*r+pf-1, lowest bits first.
    pf = 32 // bits
    word = int(pack_rows(codes, bits)[0, 0]) & 0xFFFFFFFF
    assert [(word >> (bits * i)) & (2**bits - 1) for i in range(pf)] == codes[:pf, 0].tolist()


@pytest.mark.parametrize("bits", [4, 8])
def test_v1_zero_points_decode_word_level_including_zero(bits):
    """gptqmodel writes v1 as one word-level subtraction with borrows; a zero point of 0 must survive."""
    zeros = torch.randint(0, 2**bits, (6, 32), dtype=torch.int32)
    zeros[0, :5] = 0
    zeros[1, ::3] = 0
    zeros[2] = 2**bits - 1
    v1 = encode_zeros(zeros, bits, "gptq")
    expected_v1 = (pack_cols(zeros, bits).to(torch.int64) - sum(1 << (bits * i) for i in range(32 // bits))) % 2**32
    assert torch.equal(v1.to(torch.int64) % 2**32, expected_v1)
    assert torch.equal(decode_zeros(v1, bits, "gptq"), zeros)
    assert torch.equal(decode_zeros(encode_zeros(zeros, bits, "gptq_v2"), bits, "gptq_v2"), zeros)
    naive = unpack_cols(v1, bits) + 1  # the per-field +1 some loaders do
    assert not torch.equal(naive, zeros)

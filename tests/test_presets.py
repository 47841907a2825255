"""Parameter presets on the real SD 1.4 UNet layout (built on the meta device: no memory, no weights)."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from erasekit.errors import ErasekitError
from erasekit.presets import select_parameters

CONFIG = Path(__file__).parent / "data" / "sd14_unet_config.json"


@pytest.fixture(scope="module")
def sd14_unet():
    config = {k: v for k, v in json.loads(CONFIG.read_text()).items() if not k.startswith("_")}
    with torch.device("meta"):
        return UNet2DConditionModel(**config)


def test_config_is_sd14(sd14_unet):
    assert sum(p.numel() for p in sd14_unet.parameters()) == 859_520_964


def test_esd_x_trains_every_cross_attention_tensor(sd14_unet):
    names = select_parameters(sd14_unet, "attn2")
    # 16 transformer blocks (6 down, 1 mid, 9 up), each attn2 with to_q, to_k, to_v weights and to_out.0 weight, bias.
    assert len(names) == 16 * 5
    assert all(".attn2." in n for n in names)
    assert sum(1 for n in names if n.endswith("attn2.to_k.weight")) == 16


def test_esd_x_strict_trains_only_keys_and_values(sd14_unet):
    names = select_parameters(sd14_unet, "attn2-kv")
    assert len(names) == 32
    assert {n.rsplit(".", 2)[-2] for n in names} == {"to_k", "to_v"}


def test_esd_u_trains_everything_but_cross_attention_time_embedding_and_output(sd14_unet):
    names = set(select_parameters(sd14_unet, "non-attn2"))
    every = {n for n, _ in sd14_unet.named_parameters()}
    left_out = every - names
    assert all(("attn2" in n) or n.startswith(("time_embedding.", "conv_out.", "conv_norm_out.")) for n in left_out)
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight" in names
    assert "conv_in.weight" in names
    assert not any("attn2" in n for n in names)


def test_all_and_unknown_presets(sd14_unet):
    assert len(select_parameters(sd14_unet, "all")) == len(list(sd14_unet.parameters()))
    with pytest.raises(ErasekitError, match="unknown parameter preset"):
        select_parameters(sd14_unet, "attn3")


@pytest.mark.parametrize("method,kv_only", [("uce", True), ("ablating", True), ("sdd", False), ("fmn", False)])
def test_baselines_train_the_cross_attention_of_their_papers(sd14_unet, method, kv_only):
    from erasekit.methods import get_method

    names = select_parameters(sd14_unet, get_method(method).Config().parameters)
    assert all(".attn2." in n for n in names)
    assert len(names) == (16 * 2 if kv_only else 16 * 5)
    assert all(n.endswith(("to_k.weight", "to_v.weight")) for n in names) == kv_only

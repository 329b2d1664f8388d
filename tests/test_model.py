"""Attention isolation, RoPE, and the two attention backends."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.helpers import short_batch
from tjepa.attention import attention_groups, attention_mask
from tjepa.config import ConfigError
from tjepa.model import ModelConfig, Transformer, rotate, rotations_at


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_predictor_attention_keeps_spans_apart_and_context_blind(backend):
    torch.manual_seed(0)
    net = Transformer(dim=16, depth=2, heads=2, mlp_ratio=2, rope_theta=10_000).eval()
    batch = short_batch(seed=3)
    groups = attention_groups(batch)  # (V, S)
    positions = torch.cat([batch.context_positions, batch.target_positions], 1)
    x = torch.randn(*groups.shape, 16)
    mask = attention_mask(groups, backend)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flex on CPU warns that it is unfused
        base = net(x, positions, mask)
        for span in (1, 2):
            noisy = torch.where((groups == span)[..., None], torch.randn_like(x), x)
            out = net(noisy, positions, mask)
            others = (groups >= 0) & (groups != span)
            assert torch.allclose(out[others], base[others], atol=1e-6)
            assert not torch.allclose(out[groups == span], base[groups == span])


def test_rope_attention_is_unchanged_when_all_positions_shift():
    torch.manual_seed(0)
    net = Transformer(dim=16, depth=2, heads=2, mlp_ratio=2, rope_theta=10_000).eval()
    batch = short_batch(seed=1)
    groups = attention_groups(batch)
    positions = torch.cat([batch.context_positions, batch.target_positions], 1)
    x = torch.randn(*groups.shape, 16)
    mask = attention_mask(groups)
    with torch.no_grad():
        base = net(x, positions, mask)
        shifted = net(x, positions + 137, mask)
        scrambled = net(x, positions * 2, mask)
    valid = groups >= 0
    assert torch.allclose(base[valid], shifted[valid], atol=1e-4)
    assert not torch.allclose(base[valid], scrambled[valid], atol=1e-3)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_rotate_gives_the_librarys_rotary_embedding_at_arbitrary_positions(dtype, tolerance):
    from rotary_embedding_torch import RotaryEmbedding, apply_rotary_emb

    rope = RotaryEmbedding(16)
    positions = torch.tensor([[0, 3, 7, 40, 41], [5, 2, 9, 1, 100]])  # arbitrary, per row
    x = torch.randn(2, 4, 5, 16).to(dtype)  # (N, H, S, Dh)
    expected = apply_rotary_emb(rope(positions)[:, None], x)
    got = rotate(x, rotations_at(rope, positions))
    assert got.dtype == expected.dtype == dtype
    assert torch.allclose(got.float(), expected.float(), atol=tolerance, rtol=0)
    assert not torch.allclose(got, x, atol=tolerance)  # it turns them
    angles = rotations_at(rope, positions)  # the real form torch.compile is given
    real = rotate(x, torch.stack((angles.real, angles.imag), dim=-1))
    assert torch.allclose(real.float(), got.float(), atol=tolerance, rtol=0)


def test_model_config_refuses_heads_that_do_not_split_the_width():
    with pytest.raises(ConfigError, match="dim"):
        ModelConfig(dim=30, heads=4)

"""Attention isolation, RoPE, and the two attention backends."""

from __future__ import annotations

import warnings

import pytest
import torch

from tjepa.jepa import JEPA, encode_documents, prediction_loss
from tjepa.masking import MaskingConfig, MaskSampler, attention_groups
from tjepa.model import ModelConfig, Transformer, attention_mask

CONFIG = ModelConfig(vocab_size=50, dim=32, depth=2, heads=2, predictor_dim=16,
                     predictor_depth=2, predictor_heads=2)


def masked_batch(seed=0, views=2):
    sampler = MaskSampler(MaskingConfig("ul2", views=views), seed=seed)
    tokens = torch.randint(1, 50, (4, 40), generator=torch.Generator().manual_seed(seed))
    return sampler(tokens, torch.tensor([40, 33, 20, 9]))


def test_context_encoder_output_ignores_target_tokens():
    torch.manual_seed(0)
    model = JEPA(CONFIG).eval()
    batch = masked_batch()
    changed = batch.tokens.clone()
    v = 0
    targets = batch.target_positions[v][batch.target_valid[v]]
    changed[batch.document[v], targets] = (changed[batch.document[v], targets] % 49) + 1
    with torch.no_grad():
        before, _ = model.predict(batch)
        after_batch = type(batch)(**{**batch.__dict__, "tokens": changed})
        after, targets_after = model.predict(after_batch)
    # The predictions (context encoder → predictor) do not move; the targets do.
    assert torch.equal(before, after)
    assert not torch.equal(model.predict(batch)[1], targets_after)


def test_predictions_do_not_depend_on_how_much_padding_the_batch_has():
    torch.manual_seed(0)
    model = JEPA(CONFIG).eval()
    batch = masked_batch()
    pad = lambda t, value: torch.nn.functional.pad(t, (0, 24), value=value)  # 24 more slots
    wider = type(batch)(**{**batch.__dict__,
                           "context_positions": pad(batch.context_positions, 0),
                           "context_valid": pad(batch.context_valid, False),
                           "target_positions": pad(batch.target_positions, 0),
                           "target_span": pad(batch.target_span, -1)})
    with torch.no_grad():
        narrow_predictions, _ = model.predict(batch)
        wide_predictions, _ = model.predict(wider)
    valid = batch.target_valid
    assert torch.allclose(narrow_predictions[valid], wide_predictions[:, :valid.shape[1]][valid],
                          atol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_predictor_attention_keeps_spans_apart_and_context_blind(backend):
    torch.manual_seed(0)
    net = Transformer(dim=16, depth=2, heads=2, mlp_ratio=2, rope_theta=10_000).eval()
    batch = masked_batch(seed=3)
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
    batch = masked_batch(seed=1)
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


def test_sdpa_and_flex_attention_agree():
    torch.manual_seed(0)
    model = JEPA(CONFIG).eval()
    batch = masked_batch(seed=2, views=3)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdpa_pred, sdpa_targets = model.predict(batch)
        model.config.attention = "flex"
        flex_pred, flex_targets = model.predict(batch)
        model.config.attention = "sdpa"
    valid = batch.target_valid
    assert torch.allclose(sdpa_pred[valid], flex_pred[valid], atol=1e-5)
    assert torch.allclose(sdpa_targets[valid], flex_targets[valid], atol=1e-5)


def test_padding_never_produces_nan_and_never_leaks():
    torch.manual_seed(0)
    model = JEPA(CONFIG)
    tokens = torch.randint(1, 50, (2, 12))
    lengths = torch.tensor([12, 3])
    out = encode_documents(model.context_encoder, tokens, lengths)
    assert torch.isfinite(out).all()
    junk = tokens.clone()
    junk[1, 3:] = 7
    again = encode_documents(model.context_encoder, junk, lengths)
    assert torch.allclose(out[1, :3], again[1, :3], atol=1e-6)


def test_constant_prediction_of_layer_normed_targets_costs_about_0_42():
    targets = torch.nn.functional.layer_norm(torch.randn(64, 8, 512), (512,))
    loss = prediction_loss(torch.zeros_like(targets), targets, "smooth_l1").mean()
    assert abs(float(loss) - 0.42) < 0.01


def test_ema_update_moves_the_target_toward_the_context_encoder():
    model = JEPA(CONFIG)
    with torch.no_grad():
        for p in model.context_encoder.parameters():
            p.add_(1.0)
    target = [p.clone() for p in model.target_encoder.parameters()]
    model.update_target(0.75)
    for before, after, online in zip(target, model.target_encoder.parameters(),
                                     model.context_encoder.parameters(), strict=True):
        assert torch.allclose(after, 0.75 * before + 0.25 * online)
    assert not any(p.requires_grad for p in model.target_encoder.parameters())


def test_model_config_refuses_heads_that_do_not_split_the_width():
    from tjepa.config import ConfigError

    with pytest.raises(ConfigError, match="dim"):
        ModelConfig(dim=30, heads=4)

"""The JEPA's forward pass: context blind to targets, padding that changes nothing, both
attention backends alike, and the EMA update."""

from __future__ import annotations

import warnings

import torch

from tests.helpers import SMALL_MODEL, short_batch
from tjepa.jepa import JEPA, encode_documents


def test_context_encoder_output_ignores_target_tokens():
    torch.manual_seed(0)
    model = JEPA(SMALL_MODEL).eval()
    batch = short_batch()
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
    model = JEPA(SMALL_MODEL).eval()
    batch = short_batch()
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


def test_sdpa_and_flex_attention_agree():
    torch.manual_seed(0)
    model = JEPA(SMALL_MODEL).eval()
    batch = short_batch(seed=2, views=3)
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
    model = JEPA(SMALL_MODEL)
    tokens = torch.randint(1, 50, (2, 12))
    lengths = torch.tensor([12, 3])
    out = encode_documents(model.context_encoder, tokens, lengths)
    assert torch.isfinite(out).all()
    junk = tokens.clone()
    junk[1, 3:] = 7
    again = encode_documents(model.context_encoder, junk, lengths)
    assert torch.allclose(out[1, :3], again[1, :3], atol=1e-6)


def test_ema_update_moves_the_target_toward_the_context_encoder():
    model = JEPA(SMALL_MODEL)
    with torch.no_grad():
        for p in model.context_encoder.parameters():
            p.add_(1.0)
    target = [p.clone() for p in model.target_encoder.parameters()]
    model.update_target(0.75)
    for before, after, online in zip(target, model.target_encoder.parameters(),
                                     model.context_encoder.parameters(), strict=True):
        assert torch.allclose(after, 0.75 * before + 0.25 * online)
    assert not any(p.requires_grad for p in model.target_encoder.parameters())


def test_last_layer_targets_made_from_a_given_encoder_output_equal_a_fresh_pass():
    # the monitor hands the target encoder's output it measured to document_targets
    tokens = torch.randint(1, 50, (3, 20), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([20, 14, 7])
    torch.manual_seed(0)
    jepa = JEPA(SMALL_MODEL).eval()
    with torch.no_grad():
        encoded = encode_documents(jepa.target_encoder, tokens, lengths)
        given = jepa.document_targets(tokens, lengths, encoded=encoded)
        fresh = jepa.document_targets(tokens, lengths)
        wrong = jepa.document_targets(tokens, lengths, encoded=encoded.roll(1, dims=1))
    torch.testing.assert_close(given, fresh)
    assert not torch.allclose(wrong, fresh)  # the given output is what is read

"""The JEPA's forward pass: context blind to targets, padding that changes nothing, both
attention backends alike, and the EMA update."""

from __future__ import annotations

import warnings
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import SMALL_MODEL, short_batch
from tjepa import probe, runs
from tjepa.config import ConfigError
from tjepa.jepa import JEPA, encode_documents
from tjepa.objective import ObjectiveConfig


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


def test_block_targets_are_the_normed_mean_of_the_top_blocks_feed_forward_outputs():
    torch.manual_seed(0)
    objective = ObjectiveConfig(target="blocks", target_blocks=1)
    model = JEPA(SMALL_MODEL, objective).eval()
    tokens, lengths = torch.randint(1, 50, (2, 12)), torch.tensor([12, 12])
    captured = []  # the last block's feed-forward output, caught as it leaves the MLP
    last_mlp = model.target_encoder.transformer.blocks[-1].mlp
    handle = last_mlp.register_forward_hook(lambda m, i, out: captured.append(out))
    with torch.no_grad():
        targets = model.document_targets(tokens, lengths)
    handle.remove()
    expected = F.instance_norm(captured[0].transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(targets, expected, atol=1e-5)
    # the last layer's output, the residual stream, is another thing
    assert not torch.allclose(targets, JEPA(SMALL_MODEL).document_targets(tokens, lengths))


@pytest.mark.parametrize("target", ["last", "blocks"])
def test_token_centred_targets_carry_no_share_of_the_words_identity(target):
    torch.manual_seed(0)
    tokens = torch.randint(1, 12, (6, 20))  # a small vocabulary: every word recurs
    lengths = torch.tensor([20, 18, 15, 20, 9, 12])
    sequences = [t[:n].numpy() for t, n in zip(tokens, lengths, strict=True)]
    shares = {}
    for centering in ("off", "token"):
        torch.manual_seed(0)
        model = JEPA(SMALL_MODEL, ObjectiveConfig(target=target,
                                                  target_centering=centering)).eval()
        shares[centering] = probe.token_share(partial(probe.regression_targets, model),
                                              sequences)
    assert shares["off"] > 0.3 and abs(shares["token"]) < 1e-4


def test_embedding_targets_are_the_hidden_words_normed_input_embedding_whatever_the_context():
    torch.manual_seed(0)
    model = JEPA(SMALL_MODEL, ObjectiveConfig(target="embedding")).eval()
    tokens = torch.randint(1, 50, (2, 12))
    tokens[1, 7] = tokens[0, 3]  # one word in two contexts
    with torch.no_grad():
        targets = model.document_targets(tokens, torch.tensor([12, 12]))
        expected = F.layer_norm(model.target_encoder.embed(tokens), (SMALL_MODEL.dim,))
    torch.testing.assert_close(targets, expected)
    torch.testing.assert_close(targets[1, 7], targets[0, 3])
    sequences = [t.numpy() for t in tokens]
    share = probe.token_share(partial(probe.regression_targets, model), sequences)
    assert share == pytest.approx(1.0, abs=1e-5)


def test_block_targets_see_each_document_alone_whatever_the_padding():
    torch.manual_seed(0)
    model = JEPA(SMALL_MODEL, ObjectiveConfig(target="blocks")).eval()
    tokens = torch.randint(1, 50, (2, 12))
    with torch.no_grad():
        alone = model.document_targets(tokens[1:, :5], torch.tensor([5]))
        padded = model.document_targets(tokens, torch.tensor([12, 5]))
    assert torch.allclose(alone[0], padded[1, :5], atol=1e-5)


def test_shared_embeddings_are_trained_by_the_context_encoder_and_skipped_by_the_ema():
    model = JEPA(SMALL_MODEL, ObjectiveConfig(share_embeddings=True))
    assert model.target_encoder.embed is model.context_encoder.embed
    assert model.context_encoder.embed.weight.requires_grad
    with torch.no_grad():
        for p in model.context_encoder.parameters():
            p.add_(1.0)
    blocks = [p.clone() for p in model.target_encoder.transformer.parameters()]
    model.update_target(0.75)
    for before, after, online in zip(blocks, model.target_encoder.transformer.parameters(),
                                     model.context_encoder.transformer.parameters(),
                                     strict=True):
        assert torch.allclose(after, 0.75 * before + 0.25 * online)
    assert torch.equal(model.target_encoder.embed.weight, model.context_encoder.embed.weight)


def test_a_shared_table_survives_a_checkpoint_round_trip():
    objective = ObjectiveConfig(share_embeddings=True)
    model, again = JEPA(SMALL_MODEL, objective), JEPA(SMALL_MODEL, objective)
    again.load_state_dict(model.state_dict())
    assert again.target_encoder.embed is again.context_encoder.embed
    assert torch.equal(again.context_encoder.embed.weight, model.context_encoder.embed.weight)


def test_target_options_that_cannot_hold_are_config_errors():
    with pytest.raises(ConfigError, match="target_blocks"):
        runs.load_config(None, ['objective.target="blocks"', "objective.target_blocks=9",
                                "model.depth=4"])
    with pytest.raises(ConfigError, match="share_embeddings"):
        runs.load_config(None, ["objective.share_embeddings=true",
                                'objective.anti_collapse="sigreg"'])
    with pytest.raises(ConfigError, match="every target zero"):
        runs.load_config(None, ['objective.target="embedding"',
                                'objective.target_centering="token"'])


def test_mlm_jepa_adds_the_weighted_prediction_loss_to_the_masked_lms():
    from tjepa.mlm import MaskedLMJEPA

    torch.manual_seed(0)
    batch = short_batch()
    losses = {}
    for weight in (0.0, 1.0, 3.0):
        torch.manual_seed(0)  # the same weights each time
        model = MaskedLMJEPA(SMALL_MODEL, ObjectiveConfig(name="mlm+jepa", jepa_weight=weight))
        with torch.no_grad():
            losses[weight] = float(model(batch)[0])
    regression = losses[1.0] - losses[0.0]
    assert regression > 0  # the JEPA term is there, and scales with its weight
    assert losses[3.0] - losses[0.0] == pytest.approx(3 * regression, rel=1e-4)
    # the masked-LM part alone is the masked LM's loss on the same encoder and head
    torch.manual_seed(0)
    model = MaskedLMJEPA(SMALL_MODEL, ObjectiveConfig(name="mlm+jepa", jepa_weight=0.0))
    n_targets = batch.target_positions.shape[1]
    with torch.no_grad():
        logits = model.head(model.context_encoder(*_masked(model, batch))[:, -n_targets:])
    truth = batch.tokens[batch.document[:, None], batch.target_positions]
    ce = F.cross_entropy(logits.flatten(0, 1), truth.flatten(), reduction="none")
    assert float((ce.view_as(truth) * batch.target_valid).sum()) == pytest.approx(losses[0.0],
                                                                                  rel=1e-4)


def _masked(model, batch):
    from tjepa.attention import attention_mask
    from tjepa.mlm import MaskedInput

    masked = MaskedInput.of(batch, model.mask_id)
    return masked.tokens, masked.positions, attention_mask(masked.groups, "sdpa")


@pytest.mark.parametrize("centering", ["off", "token"])
def test_last_layer_targets_made_from_a_given_encoder_output_equal_a_fresh_pass(centering):
    # the monitor hands the target encoder's output it measured to document_targets
    tokens = torch.randint(1, 50, (3, 20), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([20, 14, 7])
    torch.manual_seed(0)
    jepa = JEPA(SMALL_MODEL, ObjectiveConfig(target_centering=centering)).eval()
    with torch.no_grad():
        encoded = encode_documents(jepa.target_encoder, tokens, lengths)
        given = jepa.document_targets(tokens, lengths, encoded=encoded)
        fresh = jepa.document_targets(tokens, lengths)
        wrong = jepa.document_targets(tokens, lengths, encoded=encoded.roll(1, dims=1))
    torch.testing.assert_close(given, fresh)
    assert not torch.allclose(wrong, fresh)  # the given output is what is read

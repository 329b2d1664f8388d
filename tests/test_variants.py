"""The variants (``tjepa.variants``): what each computes, which keys build which model, the
keys that cannot hold together, the retired ones, and a core that never asks for them."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import SMALL_MODEL, short_batch
from tjepa import probe, runs
from tjepa.config import ConfigError
from tjepa.jepa import JEPA
from tjepa.mlm import MaskedLM
from tjepa.objective import ObjectiveConfig
from tjepa.variants.jepa import VariantJEPA
from tjepa.variants.mlm_jepa import MaskedLMJEPA
from tjepa.variants.student import EncoderStudentJEPA
from tjepa.variants.targets import instance_norm

ROOT = Path(__file__).resolve().parents[1]


def test_block_targets_are_the_normed_mean_of_the_top_blocks_feed_forward_outputs():
    torch.manual_seed(0)
    objective = ObjectiveConfig(target="blocks", target_blocks=1)
    model = VariantJEPA(SMALL_MODEL, objective).eval()
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


def test_embedding_targets_are_the_hidden_words_normed_input_embedding_whatever_the_context():
    torch.manual_seed(0)
    model = VariantJEPA(SMALL_MODEL, ObjectiveConfig(target="embedding")).eval()
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
    model = VariantJEPA(SMALL_MODEL, ObjectiveConfig(target="blocks")).eval()
    tokens = torch.randint(1, 50, (2, 12))
    with torch.no_grad():
        alone = model.document_targets(tokens[1:, :5], torch.tensor([5]))
        padded = model.document_targets(tokens, torch.tensor([12, 5]))
    assert torch.allclose(alone[0], padded[1, :5], atol=1e-5)


def test_shared_embeddings_are_trained_by_the_context_encoder_and_skipped_by_the_ema():
    model = VariantJEPA(SMALL_MODEL, ObjectiveConfig(share_embeddings=True))
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
    model, again = VariantJEPA(SMALL_MODEL, objective), VariantJEPA(SMALL_MODEL, objective)
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


def test_mlm_jepa_adds_the_weighted_prediction_loss_to_the_masked_lms():
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




def test_instance_norm_normalizes_each_document_alone_as_torch_does():
    torch.manual_seed(0)
    h = torch.randn(2, 10, 6)
    segment = torch.tensor([[0] * 7 + [-1] * 3, [0] * 4 + [1] * 6])  # padding; two documents
    out = instance_norm(h, segment)
    pieces = [(0, slice(0, 7)), (1, slice(0, 4)), (1, slice(4, 10))]
    for row, span in pieces:
        expected = F.instance_norm(h[row, span].T[None])[0].T
        assert torch.allclose(out[row, span], expected, atol=1e-5)
    assert torch.isfinite(out).all()  # padding: no statistics of its own, no NaN


@pytest.mark.parametrize(("overrides", "kind"), [
    ([], JEPA),
    (['objective.anti_collapse="sigreg"'], JEPA),
    (['objective.name="mlm"'], MaskedLM),
    (['objective.name="mlm+jepa"'], MaskedLMJEPA),
    (['objective.student="encoder"'], EncoderStudentJEPA),
    (['objective.target="embedding"'], VariantJEPA),
    (['objective.loss="distill"'], VariantJEPA),
    (["objective.share_embeddings=true"], VariantJEPA),
])
def test_the_taught_keys_build_the_taught_jepa_and_every_other_key_its_variant(overrides, kind):
    config = runs.load_config(None, ["model.vocab_size=50", *overrides])
    assert type(runs.build_model(config)) is kind


CORE = ("jepa", "model", "step", "train", "monitor", "probe")
VARIANT_READS = re.compile(r"objective\.(student|loss|target)\b")


@pytest.mark.parametrize("module", CORE)
def test_the_core_imports_no_variant_and_asks_no_model_its_class(module):
    source = (ROOT / "tjepa" / f"{module}.py").read_text()
    assert "variants" not in re.findall(r"^(?:from|import) (\S+)", source, re.M)
    assert not re.search(r"from tjepa\.variants|import tjepa\.variants", source)
    assert not re.search(r"\bhasattr\(", source)
    assert not re.search(r"isinstance\([^,]+,\s*\(?\s*(JEPA|MaskedLM|Learner|\w*JEPA)\b",
                         source)
    assert not re.search(r"type\((model|self\.model)\)\s+(is|==)", source)


def test_only_the_variants_read_the_student_loss_and_target_keys():
    readers = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tjepa").rglob("*.py")
                     if VARIANT_READS.search(path.read_text()))
    assert readers and all(r.startswith("tjepa/variants/") for r in readers), readers


def test_a_run_folder_with_a_retired_key_off_loads_and_one_on_is_refused(tmp_path):
    recorded = tmp_path / "config.toml"
    recorded.write_text('[objective]\nspan_targets = "off"\ntarget_centering = "off"\n'
                        "document_weight = 0.0\n")
    assert runs.load_config(recorded).objective == ObjectiveConfig()
    for line, key in (('span_targets = "only"', "span_targets"), ('loss = "infonce"', "loss"),
                      ("document_weight = 1.0", "document_weight")):
        recorded.write_text(f"[objective]\n{line}\n")
        with pytest.raises(ConfigError, match=rf"objective\.{key} .* retired; .* commit"):
            runs.load_config(recorded)

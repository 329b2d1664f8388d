# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version,-widgets,-varInspector
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · The model: encoder, predictor, and one JEPA step
#
# `tjepa/model.py` holds two networks, both bidirectional pre-norm transformers that take
# positions as an input (rotary embeddings at arbitrary positions):
#
# - the **Encoder** (token embedding → blocks → norm), used twice: as the context encoder
#   (trained) and as the target encoder (its exponential moving average, `tjepa/jepa.py`);
# - the **Predictor**: context embeddings projected to a narrower width, one learnable mask
#   token per target position, blocks, norm, projection back to the encoder's width.
#
# Why predict *embeddings* of the hidden text rather than the text? A masked LM must name each
# hidden token among thousands, spending capacity on spelling and on choices the context
# cannot settle. The target encoder's embedding of a hidden span can keep what the context
# does settle (who acts, what happens next) and leave out what it does not. The price is a
# shortcut: if every embedding were the same vector, the prediction would be perfect. Chapter
# 04 shows that collapse; the slowly moving target encoder and the regularizer prevent it.

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("TJEPA_SMOKE") == "1"

# %%
import torch
import torch.nn.functional as F
from rotary_embedding_torch import RotaryEmbedding, apply_rotary_emb

from tjepa.jepa import JEPA
from tjepa.masking import MaskingConfig, MaskSampler
from tjepa.model import ModelConfig, count_parameters
from tjepa.objective import prediction_loss

torch.manual_seed(0)
config = ModelConfig(vocab_size=300, dim=128, depth=4, heads=4, predictor_dim=64,
                     predictor_depth=2, predictor_heads=4)
model = JEPA(config)
print(f"context encoder {count_parameters(model.context_encoder):,} parameters, "
      f"predictor {count_parameters(model.predictor):,}, target encoder "
      f"{count_parameters(model.target_encoder):,} (a copy, never trained by gradients)")
assert not any(p.requires_grad for p in model.target_encoder.parameters())

# %% [markdown]
# ## Shapes through one step
# Four documents, two views each: `V = 8` views, `C` context and `P` target slots.

# %%
tokens = torch.randint(1, 300, (4, 120))
lengths = torch.tensor([120, 95, 60, 33])
batch = MaskSampler(MaskingConfig("ul2", views=2), seed=0)(tokens, lengths)
predictions, targets = model.predict(batch)
print("tokens           ", tuple(batch.tokens.shape), " (B, T)")
print("context positions", tuple(batch.context_positions.shape), " (V, C)")
print("target positions ", tuple(batch.target_positions.shape), " (V, P)")
print("predictions      ", tuple(predictions.shape), "(V, P, D)")
print("targets          ", tuple(targets.shape), "(V, P, D), layer-normed")
assert predictions.shape == targets.shape == (8, batch.target_positions.shape[1], config.dim)

# %% [markdown]
# ## The predictor's forward pass, written out
# The predictor never sees a target token. Its input is the context embeddings, narrowed to
# its own width, then one copy of a single learnable mask token per target position. Each
# slot keeps its own position in the document (rotary, below), which is all a mask token
# carries; the attention mask of chapter 02 keeps context from seeing targets and spans from
# seeing each other. Its outputs at the mask tokens, widened back, are the predictions.

# %%
from tjepa.attention import attention_groups, attention_mask

predictor = model.predictor
with torch.no_grad():
    context_tokens = batch.tokens[batch.document[:, None], batch.context_positions]  # (V, C)
    context_groups = torch.where(batch.context_valid, 0, -1)  # padding sees only itself
    context = model.context_encoder(context_tokens, batch.context_positions,
                                    attention_mask(context_groups, config.attention))  # (V, C, D)
    n_views, n_targets = batch.target_positions.shape
    x = torch.cat([predictor.embed(context),  # (V, C, d): the context, narrowed
                   predictor.mask_token.expand(n_views, n_targets, -1)], dim=1)  # (V, C + P, d)
    positions = torch.cat([batch.context_positions, batch.target_positions], dim=1)
    x = predictor.transformer(x, positions, attention_mask(attention_groups(batch),
                                                           config.attention))
    ours = predictor.head(x[:, context.shape[1]:])  # (V, P, D): the mask tokens' outputs
print(f"largest difference from JEPA.predict: {float((ours - predictions).abs().max()):.1e}")
assert torch.allclose(ours, predictions, atol=1e-6)

# %% [markdown]
# ## RoPE at arbitrary positions
# A rotary embedding turns position `p` into a rotation; the score between a query at `p` and
# a key at `q` then depends only on `p − q`. Mask tokens carry no content, only their
# position: this is what tells the predictor *where* to predict.

# %%
rope = RotaryEmbedding(dim=32)
q, k = torch.randn(32), torch.randn(32)


def score(p, r):
    freqs = rope(torch.tensor([p, r]).float())  # (2, 32) rotations
    rq, rk = apply_rotary_emb(freqs, torch.stack([q, k]))  # q rotated to p, k to r
    return float(rq @ rk)


for p, r in [(3, 1), (103, 101), (1003, 1001), (5, 1)]:
    print(f"query at {p:5d}, key at {r:5d}: score {score(p, r):+.4f}")
assert abs(score(3, 1) - score(1003, 1001)) < 1e-3 and abs(score(3, 1) - score(5, 1)) > 1e-3

# %% [markdown]
# ## One loss, by hand
# Smooth L1 between predictions and layer-normed targets, averaged over the embedding and over
# real target tokens — recomputed here from the pieces and compared with `JEPA.forward`.

# %%
with torch.no_grad():
    h = model.target_encoder(tokens, torch.arange(120).expand(4, -1),
                             (torch.arange(120) < lengths[:, None])[:, None, None, :]
                             | torch.eye(120, dtype=torch.bool))
    h = F.layer_norm(h, (config.dim,))
    by_hand_targets = h[batch.document[:, None], batch.target_positions]
    loss_sum, n_targets, _ = model(batch)  # (and the anti-collapse term: 0 with EMA)
valid = batch.target_valid
elementwise = F.smooth_l1_loss(predictions, by_hand_targets, reduction="none").mean(-1)
by_hand = elementwise[valid].mean()
print(f"by hand {float(by_hand):.6f}   tjepa.jepa {float(loss_sum / n_targets):.6f}")
assert torch.allclose(by_hand, loss_sum / n_targets, atol=1e-5)
assert torch.allclose(targets[valid], by_hand_targets[valid], atol=1e-5)

# %% [markdown]
# A constant prediction costs about 0.42 against layer-normed targets: the level a loss must
# get well below to mean anything, and the level an untrained predictor starts at.

# %%
trivial = prediction_loss(torch.zeros_like(targets), targets, "smooth_l1")[valid].mean()
print(f"constant prediction: {float(trivial):.3f}; untrained predictor: {float(by_hand):.3f}")
assert 0.35 < float(trivial) < 0.5

# %% [markdown]
# ## The same step with no padding
# Every view above is a row padded to the widest view, so many of the slots the networks
# compute on are padding. `tjepa.packing.pack` lays each pass out in rows of `L` slots with
# the sequences end to end — documents for the target encoder, contexts for the context
# encoder, context-then-targets for the predictor — and the attention mask keeps the
# sequences apart. The loss is the same; the work is not (`train.pack_length` turns it on).

# %%
from tjepa.packing import pack, padding_share

packed = pack(batch, row_length=256)
print("document rows ", tuple(packed.document_tokens.shape), " (Rd, L)")
print("context rows  ", tuple(packed.context_tokens.shape), " (Rc, L)")
print("predictor rows", tuple(packed.predictor_group.shape), " (Rp, L)")
print(f"padding: {padding_share(batch):.0%} of the slots padded, {padding_share(packed):.0%} "
      "packed")
with torch.no_grad():
    packed_sum, packed_n, _ = model(packed)
print(f"loss padded {float(loss_sum / n_targets):.6f}   packed {float(packed_sum / packed_n):.6f}")
assert torch.allclose(loss_sum / n_targets, packed_sum / packed_n, atol=1e-5)
assert padding_share(packed) < padding_share(batch)

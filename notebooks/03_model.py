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
# **You will learn** what the three networks of a JEPA are, what each one sees, how one loss is
# computed from them, and why the predictor's attention mask makes one pass over all target
# spans the same as one pass per span. **Before you start:** chapter 02 (views, target spans,
# the predictor's attention mask); a transformer block (attention, MLP, residual, pre-norm);
# I-JEPA's method, Assran et al. 2023, §3.
#
# ## The question
# A view hides some spans of a document. What should a network predict about them? A masked
# LM (BERT, Devlin et al. 2019, §3.1) predicts the hidden *words*: a softmax over the whole
# vocabulary at every hidden token. A JEPA predicts the hidden text's *embedding*, as another
# network computes it from the whole document. The hope (I-JEPA §1) is that an embedding can
# keep what the context settles — who acts, what happens next — and leave out what it does not
# (which of several synonyms, the exact spelling), so that no capacity goes into guessing the
# unguessable.
#
# ## The three networks
# `tjepa/model.py` holds two architectures, both bidirectional pre-norm transformers that take
# each token's position as an input (rotary embeddings at arbitrary positions):
#
# - the **Encoder** (token embedding → blocks → norm), used twice: as the **context encoder**,
#   which reads only the view's context tokens and is trained by gradients, and as the
#   **target encoder**, which reads the whole document and is the context encoder's
#   exponential moving average (`tjepa/jepa.py`; chapter 04 says why it must not be trained);
# - the **Predictor**: context embeddings projected to a narrower width, then one learnable
#   mask token (a single vector, copied to every target position), blocks, norm, projection
#   back to the encoder's width.
#
# The loss compares the predictor's outputs at the mask tokens with the target encoder's
# embeddings at the same positions, layer-normed. The price of predicting embeddings is a
# shortcut a masked LM does not have: if every embedding were the same vector, the prediction
# would be perfect. Chapter 04 shows that collapse, and what prevents it.

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
# its own width, then a copy of the single learnable mask token at each target position. Each
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
    n_views, n_slots = batch.target_positions.shape  # V views, P target slots
    x = torch.cat([predictor.embed(context),  # (V, C, d): the context, narrowed
                   predictor.mask_token.expand(n_views, n_slots, -1)], dim=1)  # (V, C + P, d)
    positions = torch.cat([batch.context_positions, batch.target_positions], dim=1)
    x = predictor.transformer(x, positions, attention_mask(attention_groups(batch),
                                                           config.attention))
    ours = predictor.head(x[:, context.shape[1]:])  # (V, P, D): the mask tokens' outputs
print(f"largest difference from JEPA.predict: {float((ours - predictions).abs().max()):.1e}")
assert torch.allclose(ours, predictions, atol=1e-6)

# %% [markdown]
# ## RoPE at arbitrary positions
# A rotary embedding turns position `p` into a rotation; the score between a query at `p` and
# a key at `r` then depends only on `p − r`. Mask tokens carry no content, only their
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
# The encoders apply the same rotation with fewer operations per layer: the library's angles
# become unit complex numbers once per forward (`tjepa.model.rotations_at`), and each pair of
# features turns by one complex product (`tjepa.model.rotate`), since (x1 + i·x2)·e^{iθ} is
# (x1·cos θ − x2·sin θ) + i·(x2·cos θ + x1·sin θ). Checked against the library:

# %%
from tjepa.model import rotate, rotations_at

x = torch.randn(1, 2, 5, 32)  # (N, H, S, Dh)
at = torch.tensor([[0, 7, 3, 1003, 42]])  # arbitrary positions
assert torch.allclose(rotate(x, rotations_at(rope, at)),
                      apply_rotary_emb(rope(at)[:, None], x), atol=1e-5)

# %% [markdown]
# ## One loss, by hand
# Smooth L1 between predictions and layer-normed targets, averaged over the embedding and over
# real target tokens — recomputed here from the pieces and compared with `JEPA.forward`.
#
# The target encoder reads whole documents; its attention mask (B, 1, T, T) lets every token
# see the document's real tokens, and each padding slot itself (so no softmax row is empty).

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
# Predicting zeros costs about 0.42 against layer-normed targets, and an untrained predictor,
# whose outputs are small, starts near that level.

# %%
trivial = prediction_loss(torch.zeros_like(targets), targets)[valid].mean()
print(f"predicting zeros: {float(trivial):.3f}; untrained predictor: {float(by_hand):.3f}")
assert 0.35 < float(trivial) < 0.5

# %% [markdown]
# A stronger constant predicts the targets' mean everywhere: `val_constant_loss` in a run's
# metrics is its loss (far below 0.42 when the targets have crowded into a few directions).
# The gap between a run's validation loss and it is what the predictor reads from the context.
# That gap is necessary, not sufficient: whether what it reads is what a user wants is the
# probes' question (chapter 06), and on real text the two can disagree (docs/results.md).
# When the targets are mostly a code of the hidden word, the gap stays small even for a good
# predictor; chapter 07 works out why.

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

# %% [markdown]
# ## What one shared pass saves
# A view has several target spans. The predictor could run once per span, each time over the
# context and that span's mask tokens: with `C` context tokens and spans of lengths `s₁ … s_K`,
# that is `K·C + Σ sₖ` token slots through every layer. The shared input, the context followed by
# all the spans' mask tokens, runs once over `C + Σ sₖ` slots, and the attention mask blocks
# span-to-span attention, so each span's predictions are the ones its own pass would give
# (exercise 2 checks this) for one pass over the context instead of `K`. (With PyTorch's SDPA
# the masked-out scores are still computed; `flex_attention`, the GPU config's backend, skips
# them.) S views hold one span and R and X views many, so the saving depends on the mixture.
# For this batch:

# %%
spans_per_view = [int(g.max()) for g in attention_groups(batch)]  # spans are numbered 1..K
context_sizes = batch.context_valid.sum(1).tolist()
target_sizes = batch.target_valid.sum(1).tolist()
per_span = sum(k * c + t for k, c, t in zip(spans_per_view, context_sizes, target_sizes,
                                            strict=True))
shared = sum(c + t for c, t in zip(context_sizes, target_sizes, strict=True))
print(f"{sum(spans_per_view)} spans in {len(spans_per_view)} views: {per_span:,} token slots "
      f"with one pass per span, {shared:,} with one shared pass ({per_span / shared:.1f}×)")
assert shared <= per_span

# %% [markdown]
# ## Summary
#
# - The **context encoder** reads the context tokens at their own positions; the **target
#   encoder**, an EMA copy that gradients never reach, reads the whole document.
# - The **predictor** reads the context embeddings plus one shared mask token per target
#   position; rotary position embeddings are all that tells a mask token where it is.
# - The loss is smooth L1 between the predictions and the layer-normed target embeddings, over
#   real target tokens; the constant prediction's loss is the level to beat.
# - The attention mask (context never sees targets, a span sees only itself and the context)
#   makes one shared pass equal to one pass per span, for less work; packing rows end to end
#   (`tjepa.packing`) removes the padding too.
#
# ## References
#
# - Assran et al. 2023, *Self-Supervised Learning from Images with a Joint-Embedding Predictive
#   Architecture* (I-JEPA): §3 (context and target encoders, the predictor with mask tokens and
#   positional embeddings, the loss on the target encoder's outputs).
# - Bardes et al. 2024, *Revisiting Feature Prediction for Learning Visual Representations from
#   Video* (V-JEPA): §3.1 (an L1 regression to EMA targets).
# - Baevski et al. 2022, *data2vec*: §3.3 (targets from a teacher that sees the whole input,
#   normalized) and §3.4 (the smooth L1 loss used here).
# - Su et al. 2021, *RoFormer*: §3.2 (the rotation) and §3.4.1 (why the score depends on the
#   offset only, the property the cell above checks).
# - Devlin et al. 2019, *BERT*: §3.1 (the masked LM this chapter contrasts with).
#
# ## Exercises
#
# Each exercise is answered by the folded cell below it, which checks itself. Try it first.
#
# **1. A context token cannot see a target.** Prove it with the predictor itself: change the
# mask tokens' input to anything at all and show that the predictor's outputs at the context
# slots do not move. (Hint: rebuild the predictor's input as in the written-out pass, and reuse
# its `positions` and its attention mask, `attention_mask(attention_groups(batch), ...)`.)

# %% tags=["solution"]
C = context.shape[1]
n_views, n_slots = batch.target_positions.shape
mask = attention_mask(attention_groups(batch), config.attention)
with torch.no_grad():
    inputs = torch.cat([predictor.embed(context),
                        predictor.mask_token.expand(n_views, n_slots, -1)], dim=1)
    scrambled = inputs.clone()
    scrambled[:, C:] = 100 * torch.randn_like(scrambled[:, C:])  # anything at the target slots
    before = predictor.transformer(inputs, positions, mask)
    after = predictor.transformer(scrambled, positions, mask)
assert torch.allclose(before[:, :C], after[:, :C], atol=1e-5)  # context: not moved at all
assert not torch.allclose(before[:, C:], after[:, C:], atol=1e-3)  # targets: they did change
print("the context slots' outputs ignore whatever sits at the target slots")

# %% [markdown]
# **2. Each span alone.** Take the view with the most target spans. For each of its spans, run
# the predictor on that view's context and that span's mask tokens only (no other span, no
# padding), and show that its predictions equal the shared pass's predictions for that span.

# %% tags=["solution"]
all_groups = attention_groups(batch)  # (V, C + P): 0 context, k the k-th span, -1 padding
C = context.shape[1]
view = int(all_groups.amax(1).argmax())  # the view with the most spans
groups = all_groups[view]
real_context = groups[:C] == 0
spans = int(groups.max())
assert spans >= 2, "a view with one span would test nothing"
for span in range(1, spans + 1):
    slots = (groups[C:] == span).nonzero().squeeze(1)  # this span's target slots
    with torch.no_grad():
        alone_input = torch.cat([predictor.embed(context[view, real_context])[None],
                                 predictor.mask_token.expand(1, len(slots), -1)], dim=1)
        alone_positions = torch.cat([batch.context_positions[view, real_context],
                                     batch.target_positions[view, slots]])[None]
        alone_groups = torch.cat([torch.zeros(int(real_context.sum()), dtype=torch.long),
                                  torch.ones(len(slots), dtype=torch.long)])[None]
        alone = predictor.transformer(alone_input, alone_positions,
                                      attention_mask(alone_groups, config.attention))
        alone = predictor.head(alone[:, -len(slots):])[0]  # (s, D)
    assert torch.allclose(alone, predictions[view, slots], atol=1e-5)
print(f"view {view}: each of its {spans} spans, predicted alone, matches the shared pass")

# %% [markdown]
# **3. The target encoder learns by no gradient.** Compute the loss of one step, call
# `backward()`, and show that every context-encoder and predictor parameter has a gradient,
# no target-encoder parameter has one, and the targets themselves carry no autograd history
# (the stop-gradient of chapter 04).

# %% tags=["solution"]
model.zero_grad()
loss_sum, n_targets, anti_collapse = model(batch)
(loss_sum / n_targets + anti_collapse).backward()
trained = [p for net in (model.context_encoder, model.predictor) for p in net.parameters()
           if p.requires_grad]  # all but the rotary frequencies, which are fixed
assert trained and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
assert all(p.grad is None for p in model.target_encoder.parameters())
_, step_targets = model.predict(batch)
assert not step_targets.requires_grad  # the loss cannot reach the encoder through its targets
print("gradients reach the context encoder and the predictor, never the target encoder")

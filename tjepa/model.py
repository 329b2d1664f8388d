"""The networks: a bidirectional transformer ``Encoder`` and the JEPA ``Predictor``.

Both see tokens at arbitrary positions: the context encoder gets only the context tokens of a
view, the predictor gets the context embeddings plus one mask token per target position. So
positions are an input, not ``arange(T)``: rotary embeddings (``rotary-embedding-torch``) turn
a ``(N, S)`` position tensor into per-token rotations, and attention scores then depend only on
the distance between positions. The library's angles become unit complex numbers once per
forward, shared by every layer (``rotations_at``), and ``rotate`` turns each pair of features
by one complex product: the library's ``apply_rotary_emb``, to float32 rounding, in one
operation instead of a dozen.

Who may attend to whom is not the networks' business: they take a mask built once per batch by
``tjepa.attention`` (a dense boolean mask for SDPA, or a flex_attention block mask) and apply it
in every layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from rotary_embedding_torch import RotaryEmbedding
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention
from torch.utils.checkpoint import checkpoint

from tjepa.attention import AttentionBackend, AttentionMask
from tjepa.config import check

if TYPE_CHECKING:
    from tjepa.masking import MaskedBatch
    from tjepa.objective import ObjectiveConfig
    from tjepa.packing import PackedBatch


@dataclass
class ModelConfig:
    """Sizes of the context/target encoder and of the predictor (narrower, as in I-JEPA)."""

    vocab_size: int = 0  # 0: taken from the bins' meta.json
    dim: int = 192
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    predictor_dim: int = 96
    predictor_depth: int = 2
    predictor_heads: int = 4
    rope_theta: float = 10_000.0
    attention: AttentionBackend = "sdpa"

    def __post_init__(self) -> None:
        for name in ("dim", "depth", "heads", "predictor_dim", "predictor_depth",
                     "predictor_heads"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        check(self.vocab_size >= 0, f"vocab_size must be >= 0, got {self.vocab_size}")
        for width, heads in (("dim", "heads"), ("predictor_dim", "predictor_heads")):
            w, h = getattr(self, width), getattr(self, heads)
            check(w % h == 0 and (w // h) % 2 == 0,
                  f"{width} ({w}) must split into {heads} ({h}) heads of an even size (RoPE)")


def rotations_at(rope: RotaryEmbedding, positions: Tensor) -> Tensor:
    """The library's rotary angles at ``positions`` (N, S) as unit complex numbers, one per
    pair of features: (N, 1, S, Dh / 2), complex64; under ``torch.compile``, whose inductor
    generates no code for complex operators, as their (cos, sin): (N, 1, S, Dh / 2, 2)."""
    # No seq_len: its cache mutates module state and breaks torch.compile. [:, None] puts
    # the head axis in; without it N would broadcast against the heads.
    angles = rope(positions)[:, None, :, ::2].float()  # the library repeats each pair's angle
    if torch.compiler.is_compiling():
        return torch.stack((angles.cos(), angles.sin()), dim=-1)
    return torch.polar(torch.ones_like(angles), angles)


def rotate(x: Tensor, rotations: Tensor) -> Tensor:
    """``apply_rotary_emb`` of ``rotary-embedding-torch``: each pair (x1, x2) of x (N, H, S, Dh)
    becomes (x1·cos − x2·sin, x2·cos + x1·sin), in float32, returned in x's dtype; one complex
    product, or its real form for ``rotations_at``'s (cos, sin)."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (N, H, S, Dh / 2, 2)
    if rotations.is_complex():
        return torch.view_as_real(torch.view_as_complex(pairs) * rotations).flatten(-2).to(
            x.dtype)
    (x1, x2), (cos, sin) = pairs.unbind(-1), rotations.unbind(-1)
    return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2).to(
        x.dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, rotations: Tensor, mask: AttentionMask) -> Tensor:
        n, s, d = x.shape
        q, k, v = self.qkv(x).view(n, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = rotate(q, rotations), rotate(k, rotations)  # (N, H, S, Dh)
        if isinstance(mask, BlockMask):
            y = flex_attention(q, k, v, block_mask=mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(n, s, d))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, rotations: Tensor, mask: AttentionMask,
                return_mlp: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The block's output; with ``return_mlp``, also its feed-forward output before the
        residual add (data2vec's target: what this block adds, without the stream it adds it
        to, which carries the token's own embedding up from the input)."""
        x = x + self.attn(self.norm1(x), rotations, mask)
        mlp = self.mlp(self.norm2(x))
        return (x + mlp, mlp) if return_mlp else x + mlp


class Transformer(nn.Module):
    """Blocks sharing one rotary embedding, then a final norm.

    ``recompute`` (``train.recompute_activations``): with gradients on, each block keeps only
    its input and runs again in the backward, instead of storing its activations — a fraction
    of the memory for about a third more compute, so larger batches fit.
    """

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, rope_theta: float):
        super().__init__()
        self.rope = RotaryEmbedding(dim // heads, theta=rope_theta)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.recompute = False

    def forward(self, x: Tensor, positions: Tensor, mask: AttentionMask) -> Tensor:
        rotations = rotations_at(self.rope, positions)
        recompute = self.recompute and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:  # blocks draw no random numbers: no RNG state to save and restore
                x = checkpoint(block, x, rotations, mask, use_reentrant=False,
                               preserve_rng_state=False)
            else:
                x = block(x, rotations, mask)
        return self.norm(x)

    def mlp_outputs(self, x: Tensor, positions: Tensor, mask: AttentionMask,
                    top: int) -> list[Tensor]:
        """The feed-forward outputs (before the residual add) of the ``top`` last blocks, each
        (N, S, D): the layers data2vec averages into its targets."""
        rotations = rotations_at(self.rope, positions)
        outputs = []
        for i, block in enumerate(self.blocks):
            x, mlp = block(x, rotations, mask, return_mlp=True)
            if i >= len(self.blocks) - top:
                outputs.append(mlp)
        return outputs


class Encoder(nn.Module):
    """Token embedding → transformer at the given positions: tokens (N, S) → (N, S, D)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        assert config.vocab_size > 0, "resolve vocab_size from the bins before building"
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.transformer = Transformer(config.dim, config.depth, config.heads, config.mlp_ratio,
                                       config.rope_theta)

    def forward(self, tokens: Tensor, positions: Tensor, mask: AttentionMask) -> Tensor:
        return self.transformer(self.embed(tokens), positions, mask)

    def mlp_outputs(self, tokens: Tensor, positions: Tensor, mask: AttentionMask,
                    top: int) -> list[Tensor]:
        """``Transformer.mlp_outputs`` of the embedded tokens: ``top`` tensors (N, S, D)."""
        return self.transformer.mlp_outputs(self.embed(tokens), positions, mask, top)


class Predictor(nn.Module):
    """Context embeddings plus mask tokens at the target positions → predicted target embeddings.

    All targets of a view are packed into one input after the context; the attention mask keeps
    context from seeing targets and each span to the context and itself.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed = nn.Linear(config.dim, config.predictor_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.predictor_dim))
        self.transformer = Transformer(config.predictor_dim, config.predictor_depth,
                                       config.predictor_heads, config.mlp_ratio,
                                       config.rope_theta)
        self.head = nn.Linear(config.predictor_dim, config.dim)

    def forward(self, context: Tensor, context_positions: Tensor, target_positions: Tensor,
                mask: AttentionMask) -> Tensor:
        """context (V, C, D), positions (V, C) and (V, P) → predictions (V, P, D)."""
        n_views, n_targets = target_positions.shape
        queries = self.mask_token.expand(n_views, n_targets, -1)
        x = torch.cat([self.embed(context), queries], dim=1)
        positions = torch.cat([context_positions, target_positions], dim=1)
        x = self.transformer(x, positions, mask)
        return self.head(x[:, context.shape[1]:])

    def forward_packed(self, context: Tensor, source: Tensor, is_target: Tensor,
                       positions: Tensor, mask: AttentionMask) -> Tensor:
        """The same on packed rows (``tjepa.packing``): context (N, D) the context encoder's
        output slots, flattened; ``source`` (R, L) which of them each context slot carries;
        ``is_target`` (R, L) where the mask tokens go → predictions (R, L, D) at every slot."""
        x = torch.where(is_target[..., None], self.mask_token, self.embed(context[source]))
        return self.head(self.transformer(x, positions, mask))

    def compile(self, *args, **kwargs) -> None:
        """``nn.Module.compile``, and the packed entry point with it (a second graph)."""
        super().compile(*args, **kwargs)
        self.forward_packed = torch.compile(self.forward_packed, *args, **kwargs)


class Learner(nn.Module):
    """What the training step, the monitor and the probes may ask of any model, whatever it
    learns: the JEPA (``tjepa.jepa``), the masked LM (``tjepa.mlm``) and the variants
    (``tjepa.variants``). They ask what a model can do, never which class it is.

    - ``forward(batch)``: the summed loss over the batch's targets, their number and the
      anti-collapse term (all 0-d); ``constant_loss_sum(batch)``: the loss of the best
      constant guess, the yardstick of validation;
    - ``update_target(momentum)``: the EMA step of the target encoder (nothing without one);
    - ``context_encoder`` and ``target_encoder`` (the same module when there is no EMA copy),
      ``networks()``: every transformer once (what is compiled and recomputed);
    - ``document_targets(tokens, lengths)``: what it regresses at every token of whole
      documents, or None when it regresses nothing (a masked LM names tokens);
    - ``can_predict`` and ``predict(batch)``: predictions and targets at a batch's target
      positions, in embedding space (the forecast probe and the decoder lens read them);
    - ``losses_and_states(batch)``: at each target, its own loss (V, P), the terms
      ``forward`` sums (a JEPA's energy, a masked LM's cross-entropy), and what it holds
      there before any word head (V, P, D): a JEPA's predictions, a masked LM's encoder
      output at the ``[MASK]`` slot (the minimal pairs read both);
    - ``mask_id``: the ``[MASK]`` id its context encoder reads at the targets, if it reads one.
    """

    config: ModelConfig
    objective: ObjectiveConfig
    context_encoder: Encoder
    target_encoder: Encoder
    uses_ema: bool = False
    can_predict: bool = False
    mask_id: int | None = None

    def forward(self, batch: MaskedBatch | PackedBatch) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def constant_loss_sum(self, batch: MaskedBatch | PackedBatch) -> Tensor:
        raise NotImplementedError

    def update_target(self, momentum: float | Tensor) -> None:
        """No target encoder of its own: nothing to update."""

    def networks(self) -> list[nn.Module]:
        """The model's transformers, each once: the encoders (one when the targets come from
        the context encoder itself), then any other network that has blocks."""
        found = [self.context_encoder, self.target_encoder,
                 *(m for m in self.children() if isinstance(m, (Encoder, Predictor)))]
        return [m for i, m in enumerate(found) if not any(m is f for f in found[:i])]

    def document_targets(self, tokens: Tensor, lengths: Tensor,
                         encoded: Tensor | None = None) -> Tensor | None:
        """What the model regresses at every token of padded documents (B, T) → (B, T, D);
        None when it regresses nothing."""
        return None

    def predict(self, batch: MaskedBatch) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} predicts no embeddings")

    def losses_and_states(self, batch: MaskedBatch) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


def init_weights(module: nn.Module) -> None:
    """Small normal weights (std 0.02, as GPT-2 and I-JEPA), zero biases."""
    for name, p in module.named_parameters():
        if p.dim() >= 2 or name.endswith("mask_token"):
            nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04)
        elif name.endswith("bias"):
            nn.init.zeros_(p)
    for m in module.modules():  # residual projections shrink with depth (GPT-2)
        if isinstance(m, Transformer):
            scale = 1 / math.sqrt(2 * len(m.blocks))
            for block in m.blocks:
                block.attn.proj.weight.data.mul_(scale)
                block.mlp[2].weight.data.mul_(scale)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

"""The networks: a bidirectional transformer ``Encoder`` and the JEPA ``Predictor``.

Both see tokens at arbitrary positions: the context encoder gets only the context tokens of a
view, the predictor gets the context embeddings plus one mask token per target position. So
positions are an input, not ``arange(T)``: rotary embeddings (``rotary-embedding-torch``) turn
a ``(N, S)`` position tensor into per-token rotations, and attention scores then depend only on
the distance between positions.

Who may attend to whom comes from ``tjepa.masking`` as one integer *group* per token (0 context,
``span + 1`` target, -1 padding). ``attention_mask`` builds it once per batch, on the device, as
either a dense boolean mask for SDPA (every device) or a ``flex_attention`` block mask (CUDA,
compiled: it skips fully masked blocks and never materializes the scores). Rows that hold
several sequences end to end (``tjepa.packing``) add a sequence id per token, and their block
mask is read off the layout (``packed_block_mask``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from rotary_embedding_torch import RotaryEmbedding, apply_rotary_emb
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from torch.utils.checkpoint import checkpoint

from tjepa import masking
from tjepa.config import check

AttentionBackend = Literal["sdpa", "flex"]
AttentionMask = Tensor | BlockMask  # (N, 1, S, S) bool for SDPA, or a flex BlockMask


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


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, rotations: Tensor, mask: AttentionMask) -> Tensor:
        n, s, d = x.shape
        q, k, v = self.qkv(x).view(n, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary_emb(rotations, q), apply_rotary_emb(rotations, k)  # (N, H, S, Dh)
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

    def forward(self, x: Tensor, rotations: Tensor, mask: AttentionMask) -> Tensor:
        x = x + self.attn(self.norm1(x), rotations, mask)
        return x + self.mlp(self.norm2(x))


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
        # No seq_len: its cache mutates module state and breaks torch.compile. [:, None] puts
        # the head axis in; without it N would broadcast against the heads.
        rotations = self.rope(positions)[:, None]  # (N, 1, S, Dh)
        recompute = self.recompute and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:  # blocks draw no random numbers: no RNG state to save and restore
                x = checkpoint(block, x, rotations, mask, use_reentrant=False,
                               preserve_rng_state=False)
            else:
                x = block(x, rotations, mask)
        return self.norm(x)


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


def attention_mask(groups: Tensor, backend: AttentionBackend = "sdpa",
                   sequence: Tensor | None = None) -> AttentionMask:
    """The mask for groups (N, S), built on their device once per batch, shared by all layers.
    ``sequence`` (N, S) keeps packed sequences apart (``tjepa.packing``).

    ``flex`` falls back to SDPA on the CPU when gradients are needed: flex_attention has no CPU
    backward. Both follow the same rule (``masking.may_attend``), and tests check they agree.
    """
    if backend == "flex" and groups.device.type == "cpu" and torch.is_grad_enabled():
        backend = "sdpa"
    if backend == "sdpa":
        return masking.attention_mask(groups, sequence)

    n, s = groups.shape
    if sequence is None:
        def mask_mod(b, h, q, k):
            return masking.may_attend(groups[b, q], groups[b, k], q == k)

        return _create_block_mask(mask_mod, n, None, s, s, device=groups.device)

    def packed_mask_mod(b, h, q, k):
        return masking.may_attend(groups[b, q], groups[b, k], q == k,
                                  sequence[b, q] == sequence[b, k])

    return packed_block_mask(groups, sequence, packed_mask_mod)


def packed_block_mask(groups: Tensor, sequence: Tensor, mask_mod, block: int = 128) -> BlockMask:
    """The flex block mask of packed rows (N, S), read off the layout instead of evaluating
    ``mask_mod`` on every (query, key) pair as ``create_block_mask`` does.

    Sequences lie in one piece each, so a block of 128 slots holds a run of consecutive
    segments. A (query block, key block) pair is visited when the two runs overlap, or on the
    diagonal (padding attends to itself); it needs no ``mask_mod`` ("full") when both blocks
    are one and the same sequence without padding and the keys are all context. Plain tensor
    ops: nothing to compile, and nothing to recompile when the number of rows changes.
    """
    n, s = sequence.shape
    assert s % block == 0, f"packed rows of {s} slots do not split into blocks of {block}"
    blocks = s // block
    starts = torch.ones_like(sequence, dtype=torch.bool)
    starts[:, 1:] = sequence[:, 1:] != sequence[:, :-1]
    segment = starts.cumsum(1).view(n, blocks, block)  # increases along each row
    valid = (sequence >= 0).view(n, blocks, block)
    first = torch.where(valid, segment, s).amin(-1)  # (N, blocks); s: no real slot in it
    last = torch.where(valid, segment, -1).amax(-1)
    diagonal = torch.eye(blocks, dtype=torch.bool, device=sequence.device)
    visit = (first[:, :, None] <= last[:, None, :]) & (first[:, None, :] <= last[:, :, None])
    visit |= diagonal
    one_sequence = (first == last) & valid.all(-1)
    keys_context = (groups.view(n, blocks, block) == 0).all(-1)
    full = (one_sequence[:, :, None] & one_sequence[:, None, :] & keys_context[:, None, :]
            & (first[:, :, None] == first[:, None, :]))

    def kv_blocks(chosen: Tensor) -> tuple[Tensor, Tensor]:  # (N, 1, nb), (N, 1, nb, nb)
        counts = chosen.sum(-1, dtype=torch.int32)
        indices = torch.argsort((~chosen).to(torch.uint8), dim=-1, stable=True).to(torch.int32)
        return counts[:, None], indices[:, None]

    return BlockMask.from_kv_blocks(*kv_blocks(visit & ~full), *kv_blocks(full),
                                    BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(s, s))


def _create_block_mask(*args, **kwargs) -> BlockMask:
    # Compiled on CUDA so the block mask is built without materializing (N, S, S).
    return create_block_mask(*args, **kwargs, _compile=kwargs["device"].type == "cuda")


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

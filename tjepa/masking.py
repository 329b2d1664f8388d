"""UL2 denoisers for a JEPA: which tokens the context encoder sees, which the predictor predicts.

A *view* of a document splits its tokens into *context* (seen by the context encoder), *target
spans* (hidden; the predictor regresses the target encoder's embeddings there) and, when a
denoiser keeps only part of the rest, unused tokens. The denoisers follow UL2 (Tay et al. 2022):

- R (regular): short spans, low rate      — local infilling;
- X (extreme): long spans or a high rate  — reconstructing much from little;
- S (sequential): the end of the document — predicting what comes next from a prefix.

The sampler is vectorized over views: every view draws its denoiser from the mixture, then a
handful of sorts over a ``(V, T)`` tensor place the spans and pick the context. There is no
loop over samples or spans, so it runs in a DataLoader worker or on the GPU alike.

A ``MaskedBatch`` holds index tensors only; who may attend to whom follows from them
(``tjepa.attention``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from tjepa.config import CONFIG_DIR, ConfigError, check, from_dict, load_toml

DenoiserKind = Literal["span", "suffix"]


@dataclass
class Denoiser:
    """One denoiser of the mixture.

    ``span``: ``rate`` of the document's tokens are targets, cut into spans whose lengths vary
    around ``mean_span`` (at most ``max_spans``, 0 for no limit). ``suffix``: one span, the last
    ``rate`` of the document. In both, ``context_keep`` of the remaining tokens, and never fewer
    than ``min_context``, become context.

    Short documents are clamped, never refused: a view always has at least one target token
    and ``min(min_context, length - 1)`` context tokens, and at most as many spans as fit with a
    token between neighbours. Documents need 2 tokens at least (the loader skips shorter ones).
    """

    name: str
    kind: DenoiserKind = "span"
    weight: float = 1.0
    rate: float = 0.15
    mean_span: float = 3.0
    max_spans: int = 0
    context_keep: float = 1.0
    min_context: int = 4

    def __post_init__(self) -> None:
        check(self.weight > 0, f"denoiser {self.name!r}: weight must be > 0, got {self.weight}")
        check(0 < self.rate < 1, f"denoiser {self.name!r}: rate must be in (0, 1), got {self.rate}"
              " (a rate of 1 leaves no context)")
        check(self.mean_span >= 1,
              f"denoiser {self.name!r}: mean_span must be >= 1, got {self.mean_span}")
        check(self.max_spans >= 0,
              f"denoiser {self.name!r}: max_spans must be >= 0 (0: no limit), got {self.max_spans}")
        check(0 < self.context_keep <= 1, f"denoiser {self.name!r}: context_keep must be in "
              f"(0, 1], got {self.context_keep} (0 would leave an empty context)")
        check(self.min_context >= 1,
              f"denoiser {self.name!r}: min_context must be >= 1, got {self.min_context}")


@dataclass
class MaskingConfig:
    """The mixture: ``denoisers`` (or the named ``mixture`` file they come from) and ``views``.

    ``mixture`` names a file in ``configs/masking/`` (``"ul2"``) or a path; ``denoisers``, when
    given, win (a run folder's resolved config lists them, so it needs no other file).
    With ``views = K`` every document gets K independent views, each with its own denoiser.
    """

    mixture: str = "ul2"
    views: int = 1
    denoisers: list[Denoiser] = field(default_factory=list)

    def __post_init__(self) -> None:
        check(self.views >= 1, f"views must be >= 1, got {self.views}")
        if not self.denoisers:
            self.denoisers = load_mixture(self.mixture)
        names = [d.name for d in self.denoisers]
        check(len(set(names)) == len(names), f"denoiser names must be unique, got {names}")

    def check_fits(self, block_size: int) -> None:
        """Refuse denoisers that cannot work on documents of up to ``block_size`` tokens."""
        for d in self.denoisers:
            check(d.min_context < block_size, f"denoiser {d.name!r}: min_context "
                  f"{d.min_context} leaves no room for targets in blocks of {block_size} tokens")
            check(d.mean_span <= block_size, f"denoiser {d.name!r}: spans of "
                  f"{d.mean_span} tokens cannot fit in blocks of {block_size} tokens")


def load_mixture(name_or_path: str | Path) -> list[Denoiser]:
    """Denoisers of a mixture file: ``[[denoisers]]`` tables (``configs/masking/ul2.toml``)."""
    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIG_DIR / "masking" / f"{name_or_path}.toml"
        if not path.is_file():
            known = sorted(p.stem for p in (CONFIG_DIR / "masking").glob("*.toml"))
            raise ConfigError(f"masking mixture {str(name_or_path)!r}: no such file "
                              f"(known: {', '.join(known)})")
    table = load_toml(path)
    unknown = set(table) - {"denoisers"}
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r} (expected [[denoisers]])")
    if not table.get("denoisers"):
        raise ConfigError(f"{path}: no [[denoisers]] in the mixture")
    return [from_dict(Denoiser, d, f"{path} denoisers[{i}]")
            for i, d in enumerate(table["denoisers"])]


@dataclass
class MaskedBatch:
    """Documents and their views, as index tensors. ``V = B * views``; view ``v`` is of document
    ``document[v]``. Context and target positions index the document's tokens."""

    tokens: Tensor  # (B, T) int64, padded with 0
    lengths: Tensor  # (B,)
    document: Tensor  # (V,) which document each view is of
    denoiser: Tensor  # (V,) which denoiser of the mixture made it (-1: none, set by hand)
    context_positions: Tensor  # (V, C), padded with 0
    context_valid: Tensor  # (V, C) bool
    target_positions: Tensor  # (V, P), spans packed one after another, padded with 0
    target_span: Tensor  # (V, P) span id within the view, -1 for padding

    @property
    def target_valid(self) -> Tensor:
        return self.target_span >= 0

    def part(self, index: int, count: int) -> MaskedBatch:
        """The ``index``-th of ``count`` equal shares of the documents, with their views: one
        rank's share under DDP, one micro-batch under gradient accumulation."""
        n_docs = len(self.lengths)
        assert n_docs % count == 0, f"{n_docs} documents do not split into {count} parts"
        size = n_docs // count
        docs = slice(index * size, (index + 1) * size)
        views = slice(index * size * self.views, (index + 1) * size * self.views)
        return MaskedBatch(
            self.tokens[docs], self.lengths[docs], self.document[views] - index * size,
            self.denoiser[views], self.context_positions[views], self.context_valid[views],
            self.target_positions[views], self.target_span[views],
        )

    @property
    def views(self) -> int:
        return len(self.document) // len(self.lengths)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MaskedBatch:
        return map_tensors(self, lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> MaskedBatch:
        return map_tensors(self, Tensor.pin_memory)


def map_tensors(batch, fn):
    """A batch dataclass of the same type with ``fn`` applied to each of its tensors."""
    return type(batch)(**{f.name: fn(getattr(batch, f.name)) for f in fields(batch)})


class MaskSampler:
    """Turns documents into a ``MaskedBatch``; deterministic under ``seed``, resumable through
    ``state_dict``. ``pad_multiple`` rounds the document and packed widths up to a multiple of
    it (fewer shapes for ``torch.compile`` to specialize on)."""

    def __init__(self, config: MaskingConfig, seed: int = 0, device: str | torch.device = "cpu",
                 pad_multiple: int = 1):
        self.config, self.pad_multiple = config, pad_multiple
        self.device = torch.device(device)
        ds = config.denoisers
        as_tensor = lambda xs, dtype: torch.tensor(xs, dtype=dtype, device=self.device)
        self.weight = as_tensor([d.weight for d in ds], torch.float)
        self.is_suffix = as_tensor([d.kind == "suffix" for d in ds], torch.bool)
        self.rate = as_tensor([d.rate for d in ds], torch.float64)
        self.mean_span = as_tensor([d.mean_span for d in ds], torch.float64)
        self.max_spans = as_tensor([d.max_spans or 2**31 - 1 for d in ds], torch.long)
        self.context_keep = as_tensor([d.context_keep for d in ds], torch.float64)
        self.min_context = as_tensor([d.min_context for d in ds], torch.long)
        self.generator = torch.Generator(self.device).manual_seed(seed)

    def __call__(self, tokens: Tensor, lengths: Tensor) -> MaskedBatch:
        """tokens (B, T), lengths (B,) → a MaskedBatch with ``B * views`` views."""
        tokens, lengths = tokens.to(self.device), lengths.to(self.device)
        assert int(lengths.min()) >= 2, "every document needs at least 2 tokens"
        width = -(-tokens.shape[1] // self.pad_multiple) * self.pad_multiple
        tokens = torch.nn.functional.pad(tokens, (0, width - tokens.shape[1]))
        n_docs = len(tokens)
        views = self.config.views
        document = torch.arange(n_docs, device=self.device).repeat_interleave(views)
        length = lengths[document]  # (V,)
        n_views = len(document)
        denoiser = torch.multinomial(self.weight, n_views, replacement=True,
                                     generator=self.generator)
        spans = self._place_spans(denoiser, length, width)
        context = self._pick_context(denoiser, length, spans)
        context_positions, context_valid = _pack(context, self.pad_multiple)
        target_positions, target_valid = _pack(spans >= 0, self.pad_multiple)
        target_span = torch.where(target_valid, spans.gather(1, target_positions), -1)
        return MaskedBatch(tokens, lengths, document, denoiser, context_positions, context_valid,
                           target_positions, target_span)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def _rand(self, n: int, m: int) -> Tensor:
        return torch.rand(n, m, generator=self.generator, device=self.device)

    def _place_spans(self, denoiser: Tensor, length: Tensor, width: int) -> Tensor:
        """The span id of every position, ``-1`` where it is not a target: (V, T)."""
        min_context = torch.minimum(self.min_context[denoiser], length - 1)
        n_target = (self.rate[denoiser] * length).round().long()
        n_target = torch.minimum(n_target.clamp(min=1), length - min_context)
        n_spans = (n_target / self.mean_span[denoiser]).round().long().clamp(min=1)
        # neighbouring spans keep one token between them, so k spans need k - 1 free tokens
        n_spans = torch.minimum(n_spans, self.max_spans[denoiser])
        n_spans = torch.minimum(n_spans, torch.minimum(n_target, length - n_target + 1))
        suffix = self.is_suffix[denoiser]
        n_spans = torch.where(suffix, 1, n_spans)
        n_views, k_max = len(length), int(n_spans.max())
        span_index = torch.arange(k_max, device=self.device)
        real_span = span_index < n_spans[:, None]  # (V, K)

        # Span lengths: cut n_target into n_spans positive parts at n_spans - 1 distinct points.
        cuts = _smallest_slots(self._rand(n_views, width), n_target - 1, k_max - 1) + 1
        cuts = torch.where(span_index[: k_max - 1] < n_spans[:, None] - 1, cuts, n_target[:, None])
        bounds = torch.cat([torch.zeros_like(n_target)[:, None], cuts.sort(1).values,
                            n_target[:, None]], dim=1)
        span_length = bounds.diff(dim=1)  # (V, K); 0 for padding spans

        # Span starts, stars and bars: the n_spans bars among (free + n_spans) slots, where
        # free = length - n_target - (n_spans - 1), place span i at bar_i + (lengths before it).
        free = length - n_target - (n_spans - 1)
        bars = _smallest_slots(self._rand(n_views, width + 1), free + n_spans, k_max)
        bars = torch.where(real_span, bars, width).sort(1).values
        start = bars + span_length.cumsum(1) - span_length
        start = torch.where(suffix[:, None], (length - n_target)[:, None], start)

        # Label positions with a +id at each span start and a -id just after its end: a running
        # sum is then id at every position inside span id - 1 and 0 outside.
        label = torch.zeros(n_views, width + 1, dtype=torch.long, device=self.device)
        span_id = torch.where(real_span, span_index + 1, 0)
        label.scatter_add_(1, start.clamp(max=width), span_id)
        label.scatter_add_(1, (start + span_length).clamp(max=width), -span_id)
        return label.cumsum(1)[:, :width] - 1

    def _pick_context(self, denoiser: Tensor, length: Tensor, spans: Tensor) -> Tensor:
        """Which positions are context: ``context_keep`` of the rest, at least ``min_context``."""
        width = spans.shape[1]
        position = torch.arange(width, device=self.device)
        eligible = (position < length[:, None]) & (spans < 0)
        n_free = eligible.sum(1)
        keep = (self.context_keep[denoiser] * n_free).round().long()
        min_context = torch.minimum(self.min_context[denoiser], length - 1)
        keep = torch.minimum(torch.maximum(keep, min_context), n_free)
        keys = torch.where(eligible, self._rand(len(length), width), 2.0)
        rank = keys.argsort(1).argsort(1)  # eligible positions first, in random order
        return rank < keep[:, None]


def forecast_batch(tokens: Tensor, lengths: Tensor, prefix_lengths: Tensor,
                   pad_multiple: int = 8, horizon: int | None = None) -> MaskedBatch:
    """One S-denoiser view per document with the split chosen, not drawn: the first
    ``prefix_lengths[b]`` tokens are the context, the next ``horizon`` tokens (all the rest
    when None) one target span. What the probes use to ask "what does the predictor expect
    after this prefix?"."""
    position = torch.arange(tokens.shape[1], device=tokens.device)
    prefix = torch.minimum(prefix_lengths.to(lengths), lengths - 1).clamp(min=1)[:, None]
    context_positions, context_valid = _pack(position < prefix, pad_multiple)
    end = lengths[:, None] if horizon is None else torch.minimum(lengths[:, None],
                                                                 prefix + horizon)
    suffix = (position >= prefix) & (position < end)
    target_positions, target_valid = _pack(suffix, pad_multiple)
    n = len(tokens)
    return MaskedBatch(tokens, lengths, torch.arange(n, device=tokens.device),
                       torch.full((n,), -1, device=tokens.device), context_positions,
                       context_valid, target_positions,
                       torch.where(target_valid, 0, -1))


def each_token_hidden(tokens: Tensor, lengths: Tensor, pad_multiple: int = 1) -> MaskedBatch:
    """One view per token of every document: that token the one target, every other token of
    the document context (a masked LM's pseudo-likelihood hides them so, one at a time). The
    views run document by document, token by token: view ``v`` hides token ``v − start`` of
    document ``document[v]``."""
    n_docs, width = tokens.shape
    document = torch.arange(n_docs, device=tokens.device).repeat_interleave(lengths)  # (V,)
    start = torch.cumsum(lengths, 0) - lengths  # each document's first view
    hidden = torch.arange(len(document), device=tokens.device) - start[document]  # (V,)
    position = torch.arange(width, device=tokens.device)[None, :]  # (1, T)
    real = position < lengths[document][:, None]  # (V, T)
    target = position == hidden[:, None]
    context_positions, context_valid = _pack(real & ~target, pad_multiple)
    target_positions, target_valid = _pack(target, pad_multiple)
    return MaskedBatch(tokens, lengths, document,
                       torch.full((len(document),), -1, device=tokens.device),
                       context_positions, context_valid, target_positions,
                       torch.where(target_valid, 0, -1))


def span_statistics(batch: MaskedBatch, config: MaskingConfig) -> dict[str, dict[str, float]]:
    """Per denoiser: views, mean target rate, mean span length, mean spans and context share."""
    length = batch.lengths[batch.document].double()
    targets = batch.target_valid.sum(1).double()
    spans = (batch.target_span.max(1).values + 1).double()
    context = batch.context_valid.sum(1).double()
    stats = {}
    for i, d in enumerate(config.denoisers):
        mine = batch.denoiser == i
        if mine.any():
            stats[d.name] = {
                "views": int(mine.sum()),
                "target_rate": float((targets[mine] / length[mine]).mean()),
                "mean_span": float((targets[mine] / spans[mine]).mean()),
                "spans": float(spans[mine].mean()),
                "context_rate": float((context[mine] / length[mine]).mean()),
            }
    return stats


# --- helpers -------------------------------------------------------------------------------


def _smallest_slots(keys: Tensor, n_slots: Tensor, k: int) -> Tensor:
    """Per row, the slots (in 0..n_slots-1) of the ``k`` smallest keys: ``k`` distinct slots
    drawn uniformly without replacement (rows with fewer slots fill up with slot ``n_slots``).
    """
    if k <= 0:
        return keys.new_zeros(keys.shape[0], 0, dtype=torch.long)
    slot = torch.arange(keys.shape[1], device=keys.device)
    keys = torch.where(slot < n_slots[:, None], keys, 2.0)
    chosen = keys.topk(k, dim=1, largest=False).indices
    return torch.minimum(chosen, n_slots[:, None].clamp(min=0))


def _pack(selected: Tensor, multiple: int) -> tuple[Tensor, Tensor]:
    """Positions of the True entries of each row, in order, left-aligned: positions and valid."""
    width = selected.shape[1]
    position = torch.arange(width, device=selected.device)
    order = torch.where(selected, position, position + width).sort(1).values
    n = int(selected.sum(1).max())
    n = min(width, -(-max(n, 1) // multiple) * multiple)
    packed = order[:, :n]
    valid = packed < width
    return torch.where(valid, packed, 0), valid

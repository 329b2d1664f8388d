"""UL2 masking: property-based tests of the sampler and the attention rule (``pytest -k mask``)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tjepa.attention import attention_groups, dense_mask
from tjepa.config import ConfigError, from_dict
from tjepa.masking import (
    Denoiser,
    MaskingConfig,
    MaskSampler,
    forecast_batch,
    load_mixture,
    span_statistics,
)

denoisers = st.builds(
    Denoiser,
    name=st.just("d"),
    kind=st.sampled_from(["span", "suffix"]),
    rate=st.floats(0.05, 0.9),
    mean_span=st.floats(1, 70),
    max_spans=st.integers(0, 5),
    context_keep=st.floats(0.1, 1.0),
    min_context=st.integers(1, 20),
)


@st.composite
def masked_batches(draw):
    denoiser = draw(denoisers)
    lengths = draw(st.lists(st.integers(2, 90), min_size=1, max_size=8))
    width = max(lengths) + draw(st.integers(0, 5))
    views = draw(st.integers(1, 3))
    config = MaskingConfig(denoisers=[denoiser], views=views)
    sampler = MaskSampler(config, seed=draw(st.integers(0, 2**16)))
    tokens = torch.randint(1, 50, (len(lengths), width))
    batch = sampler(tokens, torch.tensor(lengths))
    return denoiser, batch


def view_sets(batch, v):
    context = batch.context_positions[v][batch.context_valid[v]].tolist()
    targets = batch.target_positions[v][batch.target_valid[v]].tolist()
    spans = batch.target_span[v][batch.target_valid[v]].tolist()
    return context, targets, spans, int(batch.lengths[batch.document[v]])


@settings(max_examples=150, deadline=None)
@given(masked_batches())
def test_mask_targets_and_context_are_disjoint_and_inside_the_document(case):
    _, batch = case
    for v in range(len(batch.document)):
        context, targets, _, length = view_sets(batch, v)
        assert context and targets
        assert not set(context) & set(targets)
        assert len(set(context)) == len(context) and len(set(targets)) == len(targets)
        assert all(0 <= p < length for p in context + targets)


@settings(max_examples=150, deadline=None)
@given(masked_batches())
def test_mask_spans_are_contiguous_packed_in_order_and_separated(case):
    _, batch = case
    for v in range(len(batch.document)):
        _, targets, spans, _ = view_sets(batch, v)
        assert spans == sorted(spans) and spans[0] == 0
        assert sorted(set(spans)) == list(range(max(spans) + 1))
        for s in set(spans):
            positions = [p for p, q in zip(targets, spans, strict=True) if q == s]
            assert positions == list(range(positions[0], positions[0] + len(positions)))
        ends = {s: max(p for p, q in zip(targets, spans, strict=True) if q == s) for s in spans}
        starts = {s: min(p for p, q in zip(targets, spans, strict=True) if q == s) for s in spans}
        assert all(starts[s + 1] > ends[s] + 1 for s in range(max(spans)))


@settings(max_examples=150, deadline=None)
@given(masked_batches())
def test_mask_target_count_matches_the_rate_within_rounding(case):
    d, batch = case
    for v in range(len(batch.document)):
        context, targets, spans, length = view_sets(batch, v)
        min_context = min(d.min_context, length - 1)
        expected = min(max(round(d.rate * length), 1), length - min_context)
        assert len(targets) == expected
        if expected == round(d.rate * length):
            assert abs(len(targets) - d.rate * length) <= 0.5
        if d.max_spans:
            assert max(spans) < d.max_spans
        free = length - len(targets)
        assert len(context) == min(max(round(d.context_keep * free), min_context), free)


@settings(max_examples=100, deadline=None)
@given(masked_batches())
def test_mask_suffix_targets_are_a_suffix_and_context_comes_before(case):
    d, batch = case
    if d.kind != "suffix":
        return
    for v in range(len(batch.document)):
        context, targets, spans, length = view_sets(batch, v)
        assert set(spans) == {0}
        assert targets == list(range(length - len(targets), length))
        assert max(context) < targets[0]


@settings(max_examples=100, deadline=None)
@given(masked_batches())
def test_mask_padding_is_never_context_or_target(case):
    _, batch = case
    assert (batch.context_positions[~batch.context_valid] == 0).all()
    assert (batch.target_positions[~batch.target_valid] == 0).all()
    assert (batch.target_span[~batch.target_valid] == -1).all()


def reference_rule(groups: list[int], q: int, k: int) -> bool:
    gq, gk = groups[q], groups[k]
    if gq < 0:
        return q == k  # padding sees itself only
    if gk < 0:
        return False  # nobody sees padding
    return gk == 0 or gk == gq  # context sees context; a span sees context and itself


@settings(max_examples=60, deadline=None)
@given(masked_batches())
def test_mask_derived_attention_follows_the_rule(case):
    _, batch = case
    groups = attention_groups(batch)
    mask = dense_mask(groups)[:, 0]
    for v in range(len(batch.document)):
        g = groups[v].tolist()
        expected = [[reference_rule(g, q, k) for k in range(len(g))] for q in range(len(g))]
        assert mask[v].tolist() == expected


def test_mask_sampler_is_deterministic_and_resumes_from_its_state():
    config = MaskingConfig("ul2", views=2)
    tokens, lengths = torch.randint(1, 9, (6, 100)), torch.tensor([100, 50, 20, 2, 3, 77])
    a = MaskSampler(config, seed=5)
    a(tokens, lengths)
    state = a.state_dict()
    second = a(tokens, lengths)
    b = MaskSampler(config, seed=5)
    b.load_state_dict(state)
    again = b(tokens, lengths)
    for name in ("denoiser", "context_positions", "target_positions", "target_span"):
        assert torch.equal(getattr(second, name), getattr(again, name))
    other = MaskSampler(config, seed=6)(tokens, lengths)
    assert not torch.equal(other.target_positions, MaskSampler(config, seed=5)(tokens,
                                                                                lengths).target_positions)


def test_mask_views_draw_denoisers_from_the_mixture_weights():
    config = MaskingConfig("ul2", views=4)
    batch = MaskSampler(config, seed=0)(torch.ones(500, 64, dtype=torch.long),
                                        torch.full((500,), 64))
    counts = torch.bincount(batch.denoiser, minlength=len(config.denoisers)).float()
    weights = torch.tensor([d.weight for d in config.denoisers])
    assert torch.allclose(counts / counts.sum(), weights / weights.sum(), atol=0.03)
    assert torch.equal(batch.document, torch.arange(500).repeat_interleave(4))


def test_mask_packing_rounds_widths_up_to_a_multiple():
    sampler = MaskSampler(MaskingConfig("ul2"), seed=0, pad_multiple=16)
    batch = sampler(torch.ones(3, 100, dtype=torch.long), torch.tensor([100, 40, 7]))
    assert batch.context_positions.shape[1] % 16 == 0
    assert batch.target_positions.shape[1] % 16 == 0


@pytest.mark.parametrize("mixture", ["ul2", "seed"])
def test_mask_shipped_mixtures_load(mixture):
    ds = load_mixture(mixture)
    assert {d.kind for d in ds} == {"span", "suffix"}
    assert len(ds) == 7


@pytest.mark.parametrize(("table", "message"), [
    ({"name": "R", "rate": 1.0}, "denoiser 'R': rate must be in (0, 1)"),
    ({"name": "R", "context_keep": 0.0}, "empty context"),
    ({"name": "R", "min_context": 0}, "min_context must be >= 1"),
    ({"name": "R", "mean_span": 0.5}, "mean_span must be >= 1"),
    ({"name": "R", "kind": "prefix"}, "kind: expected one of"),
    ({"name": "R", "rate": "high"}, "rate: expected a number"),
    ({"name": "R", "span": 3}, "unknown key 'span'"),
])
def test_mask_infeasible_denoisers_are_refused_naming_the_key(table, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_dict(Denoiser, table, "mix.toml denoisers[0]")


def test_mask_spans_that_cannot_fit_the_block_are_refused():
    config = MaskingConfig(denoisers=[Denoiser("X", rate=0.5, mean_span=64)])
    config.check_fits(256)
    with pytest.raises(ConfigError, match="denoiser 'X': spans of 64 tokens cannot fit"):
        config.check_fits(16)
    with pytest.raises(ConfigError, match="min_context"):
        MaskingConfig(denoisers=[Denoiser("R", min_context=32)]).check_fits(32)


def test_mask_two_token_documents_still_get_context_and_a_target():
    config = MaskingConfig("seed", views=7)
    batch = MaskSampler(config, seed=0)(torch.ones(1, 2, dtype=torch.long), torch.tensor([2]))
    assert batch.context_valid.sum(1).eq(1).all() and batch.target_valid.sum(1).eq(1).all()


def test_mask_batch_parts_hold_their_documents_and_views():
    sampler = MaskSampler(MaskingConfig("ul2", views=3), seed=0)
    lengths = torch.tensor([30, 40, 50, 60])
    batch = sampler(torch.arange(60).repeat(4, 1) + 1, lengths)
    second = batch.part(1, 2)
    assert torch.equal(second.lengths, lengths[2:])
    assert torch.equal(second.document, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert torch.equal(second.target_positions, batch.target_positions[6:])


def test_mask_span_statistics_match_each_denoisers_settings():
    config = MaskingConfig("ul2", views=4)
    batch = MaskSampler(config, seed=0)(torch.ones(400, 200, dtype=torch.long),
                                        torch.full((400,), 200))
    stats = span_statistics(batch, config)
    for d in config.denoisers:
        assert stats[d.name]["target_rate"] == pytest.approx(d.rate, abs=0.01)
        assert stats[d.name]["context_rate"] == pytest.approx(1 - d.rate, abs=0.01)
        if d.kind == "span" and d.mean_span < 10:
            assert stats[d.name]["mean_span"] == pytest.approx(d.mean_span, rel=0.1)


def test_mask_forecast_batch_splits_each_document_at_the_chosen_prefix():
    lengths = torch.tensor([10, 6, 3])
    tokens = torch.randint(1, 50, (3, 12))
    batch = forecast_batch(tokens, lengths, torch.tensor([4, 9, 0]))
    # the prefix is clamped so that the context and the target both keep a token
    for v, (prefix, length) in enumerate([(4, 10), (5, 6), (1, 3)]):
        context, targets, spans, _ = view_sets(batch, v)
        assert context == list(range(prefix))
        assert targets == list(range(prefix, length)) and set(spans) == {0}
    assert (batch.denoiser == -1).all()
    # a horizon asks about as many positions after every prefix, however long the rest is
    batch = forecast_batch(tokens, lengths, torch.tensor([4, 2, 1]), horizon=3)
    for v, (prefix, end) in enumerate([(4, 7), (2, 5), (1, 3)]):
        context, targets, _, _ = view_sets(batch, v)
        assert context == list(range(prefix)) and targets == list(range(prefix, end))

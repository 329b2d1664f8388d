"""Collapse metrics and the alarm, on matrices with a known answer."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import SMALL_MODEL
from tjepa.jepa import JEPA
from tjepa.masking import MaskingConfig, MaskSampler
from tjepa.mlm import MaskedLM
from tjepa.monitor import (
    CollapseAlarm,
    MonitorConfig,
    collapse_metrics,
    embedding_std,
    lidar,
    lidar_chance,
    measure,
    rankme,
    view_embeddings,
)
from tjepa.objective import ObjectiveConfig, sigreg


def orthogonal_rank_k(n: int, d: int, k: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(n, k, generator=g))
    v, _ = torch.linalg.qr(torch.randn(d, k, generator=g))
    return u @ v.T  # k equal singular values


@pytest.mark.parametrize("k", [1, 3, 10, 32])
def test_rankme_of_a_rank_k_matrix_is_k(k):
    assert rankme(orthogonal_rank_k(200, 64, k)) == pytest.approx(k, rel=0.02)


def test_rankme_of_a_constant_matrix_is_one():
    assert rankme(torch.ones(100, 32) * 3.0) == pytest.approx(1.0, abs=0.01)


def test_rankme_of_gaussian_noise_is_near_full_width():
    x = torch.randn(2000, 64, generator=torch.Generator().manual_seed(0))
    assert rankme(x) > 0.9 * 64


def test_std_is_one_over_root_d_when_healthy_and_zero_when_collapsed():
    x = torch.randn(4000, 64, generator=torch.Generator().manual_seed(0))
    assert embedding_std(x) == pytest.approx(1 / math.sqrt(64), rel=0.05)
    assert embedding_std(torch.ones(100, 64) + 1e-6 * x[:100]) < 1e-4


def test_std_misses_dimensional_collapse_that_rankme_and_sigreg_catch():
    g = torch.Generator().manual_seed(0)
    healthy = torch.randn(2000, 64, generator=g)
    plane = torch.randn(2000, 2, generator=g) @ torch.randn(2, 64, generator=g)  # rank 2
    # std barely moves ...
    assert embedding_std(plane) > 0.5 * embedding_std(healthy)
    # ... RankMe and SIGReg do
    assert rankme(plane) < 2.5 < 0.9 * 64 < rankme(healthy)
    assert float(sigreg(plane)) > 20 * float(sigreg(healthy))


def test_collapse_metrics_report_token_and_document_levels():
    x = torch.randn(500, 16)
    m = collapse_metrics(x, x[:50], prefix="context_")
    assert set(m) == {"context_rankme", "context_std", "context_sigreg",
                      "context_rankme_doc", "context_std_doc"}


def test_alarm_trips_on_rankme_or_std_and_warns_once():
    alarm = CollapseAlarm(MonitorConfig(rankme_alarm=0.1, std_alarm=0.2), width=64)
    healthy = {"rankme": 40.0, "std": 1 / 8}
    assert not alarm.check(healthy, step=10)
    with pytest.warns(UserWarning, match="collapse alarm at step 20"):
        assert alarm.check({"rankme": 3.0, "std": 1 / 8}, step=20)
    assert alarm.tripped_at == 20
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise
        assert alarm.check({"rankme": 40.0, "std": 0.001}, step=30)
    assert alarm.tripped_at == 20


def measurement(rankme: float, rankme_doc: float) -> dict[str, float]:
    return {"rankme": rankme, "rankme_doc": rankme_doc, "std": 0.08}


def test_alarm_catches_a_partial_collapse_against_the_runs_own_peak():
    # The shape of EMA alone on real text: token RankMe 84 → 26, document 28 → 6 of 128,
    # far above the fixed line (12.8).
    alarm = CollapseAlarm(MonitorConfig(), width=128)
    falling = [(84, 28), (70, 20), (55, 15), (40, 11), (26, 6)]
    with pytest.warns(UserWarning, match="of a peak of"):
        tripped = [alarm.check(measurement(*m), step=50 * (i + 1))
                   for i, m in enumerate(falling)]
    assert tripped == [False, False, False, True, True] and alarm.tripped_at == 200


def test_alarm_stays_silent_while_the_rank_grows_and_remembers_peaks_across_a_resume():
    # The shape of the default run: RankMe rising from 87 towards the width, small dips
    alarm = CollapseAlarm(MonitorConfig(), width=128)
    rising = [(87, 20), (91, 35), (95, 33), (110, 50), (104, 48), (125, 64)]
    assert not any(alarm.check(measurement(*m), step=i) for i, m in enumerate(rising))
    history = [{"step": i, **measurement(*m)} for i, m in enumerate(rising)]
    resumed = CollapseAlarm(MonitorConfig(), width=128, history=history)
    with pytest.warns(UserWarning):
        assert resumed.check(measurement(60, 40), step=10)  # under half of the peak of 125


def test_alarm_trips_when_the_regression_targets_collapse_though_the_encoder_does_not():
    # data2vec's layer-normed block targets on real text: the last layer spread, the targets
    # crowded into one direction
    alarm = CollapseAlarm(MonitorConfig(), width=128)
    spread = {"rankme": 124.0, "rankme_doc": 40.0, "std": 0.08}
    assert not alarm.check(spread | {"targets_rankme": 110.0, "targets_std": 0.08}, step=100)
    with pytest.warns(UserWarning, match="regression targets: RankMe 4.00"):
        assert alarm.check(spread | {"targets_rankme": 4.0, "targets_std": 0.005}, step=200)
    assert alarm.tripped_at == 200


def test_alarm_trips_when_the_targets_rank_halves_from_its_peak():
    alarm = CollapseAlarm(MonitorConfig(), width=128)
    spread = {"rankme": 124.0, "rankme_doc": 40.0, "std": 0.08, "targets_std": 0.08}
    assert not alarm.check(spread | {"targets_rankme": 110.0}, step=100)
    with pytest.warns(UserWarning, match="targets_rankme 50.0 of a peak of 110.0"):
        assert alarm.check(spread | {"targets_rankme": 50.0}, step=200)


@pytest.mark.parametrize("target", ["last", "blocks"])
def test_measure_reports_a_jepas_regression_targets_and_no_targets_for_a_masked_lm(target):
    tokens = torch.randint(1, 50, (4, 24), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([24, 20, 16, 9])
    torch.manual_seed(0)
    jepa = JEPA(SMALL_MODEL, ObjectiveConfig(target=target, target_blocks=2,
                                             target_block_norm="layer")).eval()
    measured = measure(jepa, tokens, lengths)
    assert {"targets_rankme", "targets_std", "targets_sigreg"} <= set(measured)
    assert "targets_rankme_doc" not in measured
    assert measured["targets_rankme"] != measured["rankme"]  # not the last layer read again
    masked_lm = MaskedLM(SMALL_MODEL, ObjectiveConfig(name="mlm")).eval()
    assert not any(k.startswith("targets_") for k in measure(masked_lm, tokens, lengths))


def documents_with_views(n: int, d: int, k: int, noise: float, q: int = 6) -> torch.Tensor:
    """N documents spread over k of d dimensions, each seen Q times with isotropic noise."""
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(d, k, generator=g))
    clean = torch.randn(n, k, generator=g) @ basis.T  # (N, D)
    return clean[:, None] + noise * torch.randn(n, q, d, generator=g)


@pytest.mark.parametrize("k", [2, 8, 20])
def test_lidar_counts_the_directions_along_which_documents_differ_beyond_their_views(k):
    views = documents_with_views(n=2000, d=32, k=k, noise=0.05)
    assert abs(lidar(views) - k) < 0.15 * k
    assert rankme(views.flatten(0, 1)) > k  # the noise fills every direction for RankMe


def test_lidar_is_blind_to_an_invertible_linear_map_of_the_embeddings():
    views = documents_with_views(n=1000, d=16, k=6, noise=0.3)
    g = torch.Generator().manual_seed(1)
    mixed = views @ (torch.randn(16, 16, generator=g) + 4 * torch.eye(16))
    assert lidar(mixed) == pytest.approx(lidar(views), rel=1e-3)


def test_lidar_chance_deals_the_views_out_at_random_and_reads_high_for_any_embedding():
    views = documents_with_views(n=1000, d=16, k=4, noise=0.05)
    assert lidar(views) < 5 and lidar_chance(views) > 12  # no document shows through


def three_documents(views: int):
    """Three short documents' tokens (3, 24) and their ``views`` masks."""
    tokens = torch.randint(1, 50, (3, 24), generator=torch.Generator().manual_seed(0))
    return tokens, MaskSampler(MaskingConfig(views=views), seed=0)(tokens,
                                                                    torch.tensor([24, 19, 12]))


def test_view_embeddings_pool_each_views_context_tokens_alone():
    tokens, batch = three_documents(views=4)
    torch.manual_seed(0)
    encoder = JEPA(SMALL_MODEL).context_encoder.eval()
    pooled = view_embeddings(encoder, batch)
    assert pooled.shape == (3, 4, SMALL_MODEL.dim)
    for v in range(len(batch.document)):  # each view by itself, no padding anywhere
        keep = batch.context_positions[v][batch.context_valid[v]]
        alone = encoder(tokens[batch.document[v], keep][None], keep[None], None)
        torch.testing.assert_close(pooled[v // 4, v % 4], alone[0].mean(0), atol=1e-5,
                                   rtol=1e-4)


def test_view_embeddings_with_a_mask_id_read_mask_slots_but_pool_the_context_only():
    tokens, batch = three_documents(views=2)
    torch.manual_seed(0)
    encoder = MaskedLM(SMALL_MODEL).context_encoder.eval()
    pooled = view_embeddings(encoder, batch, mask_id=SMALL_MODEL.vocab_size)
    for v in range(len(batch.document)):
        keep = batch.context_positions[v][batch.context_valid[v]]
        hidden = batch.target_positions[v][batch.target_valid[v]]
        ids = torch.cat([tokens[batch.document[v], keep],
                         torch.full_like(hidden, SMALL_MODEL.vocab_size)])
        alone = encoder(ids[None], torch.cat([keep, hidden])[None], None)[0, :len(keep)]
        torch.testing.assert_close(pooled[v // 2, v % 2], alone.mean(0), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(pooled, view_embeddings(encoder, batch))  # the masks were read

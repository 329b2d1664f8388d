"""The training step: compiled networks, recomputed activations, and a step that never
makes the host wait for the device."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests.helpers import TINY, HostWaits
from tjepa import runs
from tjepa.batches import mask_sampler
from tjepa.jepa import JEPA
from tjepa.lab.bench import synthetic_documents
from tjepa.masking import MaskingConfig, MaskSampler
from tjepa.optim import make_optimizer
from tjepa.packing import pack
from tjepa.step import TrainingStep, compile_networks, resolve_model


@pytest.mark.parametrize("scope", ["block", "network"])
def test_compiled_networks_give_the_eager_loss_and_gradients(scope):
    # Two batches, the second packed into a different number of rows (a recompile).
    config = runs.load_config(None, [*TINY, "data.block_size=64", "masking.views=2",
                                      "model.vocab_size=50", f'train.compile_scope="{scope}"'])
    sampler = MaskSampler(MaskingConfig("ul2", views=2), seed=0)
    generator = torch.Generator().manual_seed(0)
    batches = []
    for n_docs in (4, 9):
        lengths = torch.randint(20, 65, (n_docs,), generator=generator)
        tokens = torch.randint(1, 50, (n_docs, 64), generator=generator)
        batches.append(pack(sampler(tokens, lengths), row_length=128))
    assert batches[0].context_tokens.shape[0] != batches[1].context_tokens.shape[0]
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = JEPA(config.model, config.objective)
        if compiled:
            compile_networks(model, scope)
        for batch in batches:
            loss_sum, count, _ = model(batch)
            (loss_sum / count).backward()
        results.append((float(loss_sum.detach() / count),
                        [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-4)
    for eager, compiled in zip(eager_grads, compiled_grads, strict=True):
        assert torch.allclose(eager, compiled, atol=1e-5, rtol=1e-3)


def test_the_host_wait_audit_sees_item_boolean_indexing_and_host_side_optimizer_steps():
    x = torch.ones(4)
    with HostWaits() as waits:
        x[x > 0] = 2
        x.sum().item()
        if x.any():
            pass
    assert waits.calls == ["aten.index_put_.default", *["aten._local_scalar_dense.default"] * 2]
    # AdamW without fused or capturable reads its step count back on every step
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    optimizer = torch.optim.AdamW([p], foreach=True)
    with HostWaits() as waits:
        optimizer.step()
    assert "aten._local_scalar_dense.default" in waits.calls


@pytest.mark.parametrize("overrides", [
    ["objective.anti_collapse=\"ema\""],
    ["objective.anti_collapse=\"ema\"", "train.pack_length=256"],
    ["objective.anti_collapse=\"vicreg\"", "train.pack_length=256"],
    ["objective.anti_collapse=\"sigreg\"", "train.grad_accum=2"],
    ["objective.anti_collapse=\"ema\"", "train.pack_length=256",
     "train.recompute_activations=true"],
], ids=["ema-padded", "ema-packed", "vicreg-packed", "sigreg-accumulated", "ema-recomputed"])
def test_training_step_never_waits_for_the_device(overrides):
    # The host must queue step n+1 while the card runs step n. Eager on the CPU, with the
    # fused AdamW that CUDA runs; masks are made ahead, as BatchStream does.
    device = torch.device("cpu")
    config = runs.load_config(None, [*TINY, "model.vocab_size=60", *overrides])
    config = replace(config, model=resolve_model(config, device, 60))
    training_step = TrainingStep(config, device)
    training_step.optimizer = make_optimizer(training_step.model, config.optim, fused=True)
    documents = synthetic_documents(8, 96, 60, torch.Generator().manual_seed(0))
    batch = training_step.split(mask_sampler(config)(*documents))
    for step in range(2):  # the first step also creates the optimizer's state
        with HostWaits() as waits:
            loss = training_step(step, batch)
        assert waits.calls == [], f"step {step} waits for the device: {waits.calls}"
    assert torch.isfinite(loss)


def _saved_bytes_and_gradients(model, batch) -> tuple[int, list[torch.Tensor]]:
    """Bytes autograd keeps for the backward of one loss (each storage once), and the grads."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_sum, count, regularizer = model(batch)
    (loss_sum / count + regularizer).backward()
    return sum(storages.values()), [p.grad.clone() for p in model.parameters()
                                    if p.grad is not None]


@pytest.mark.parametrize("scope", [None, "block", "network"], ids=["eager", "block", "network"])
def test_recomputed_activations_give_the_same_gradients_and_keep_less_for_the_backward(scope):
    # train.recompute_activations: the blocks run again in the backward (a memory for compute
    # trade, for larger batches on a card); the gradients must not change.
    config = runs.load_config(None, [*TINY, "model.depth=3", "model.vocab_size=50",
                                      'objective.anti_collapse="vicreg"'])
    batch = pack(MaskSampler(MaskingConfig("ul2", views=2), seed=0)(
        torch.randint(1, 50, (6, 64), generator=torch.Generator().manual_seed(0)),
        torch.tensor([64, 60, 50, 40, 30, 20])), row_length=128)

    def run(recompute: bool, compile_scope: str | None):
        torch.manual_seed(0)
        model = JEPA(config.model, config.objective)
        for network in (model.context_encoder, model.predictor):
            network.transformer.recompute = recompute
        if compile_scope:
            compile_networks(model, compile_scope)
        return _saved_bytes_and_gradients(model, batch)

    stored, stored_grads = run(False, None)
    recomputed, recomputed_grads = run(True, scope)
    # compiled: the tolerances of test_compiled_networks_give_the_eager_loss_and_gradients
    for a, b in zip(stored_grads, recomputed_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6 if scope is None else 1e-5,
                              rtol=1e-5 if scope is None else 1e-3)
    if scope is None:  # compiled graphs save their tensors out of these hooks' sight
        assert recomputed < stored / 2, (recomputed, stored)

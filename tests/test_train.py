"""The training loop: loss falls, exact resume, signals, NaN guard, bad configs, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tjepa import train
from tjepa.config import ConfigError

TINY = [
    "model.dim=32", "model.depth=2", "model.heads=2", "model.predictor_dim=16",
    "model.predictor_depth=1", "model.predictor_heads=2", "data.batch_size=8",
    "data.block_size=96", "train.log_interval=1", "train.eval_interval=5",
    "train.eval_batches=1", "train.checkpoint_interval=4", "optim.warmup_steps=3",
    "train.device=\"cpu\"",
]


def tiny(bins: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.dir={json.dumps(str(bins))}", *extra]


def run_cli(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tjepa.train", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_loss_falls_on_tinytales(tinytales_bins, tmp_path):
    # The loop, not the objective: with EMA alone the loss falls within 60 steps. The default's
    # VICReg terms keep the targets spread, so its loss falls slowly (0.422 → 0.341 in 2400).
    config = train.load_config(None, tiny(tinytales_bins, "train.max_steps=60", "optim.lr=3e-3",
                                          'optim.anti_collapse="ema"'))
    summary = train.train(config, tmp_path / "run", progress=False)
    losses = summary["losses"]
    assert sum(losses[-10:]) / 10 < 0.9 * sum(losses[:5]) / 5
    run = tmp_path / "run"
    assert {"config.toml", "metrics.jsonl", "last.pt", "best.pt", "loss.png"} <= {
        p.name for p in run.iterdir()}
    records = train.read_metrics(run)
    assert all("step" in r and "loss" in r for r in records)
    assert all(0 <= r["data_wait"] < 1 for r in records)
    tokens_per_s, data_wait = train.throughput(records)
    assert tokens_per_s > 0 and 0 <= data_wait < 1
    assert any("val_loss" in r for r in records)


def test_batch_stream_counts_the_time_spent_making_batches_and_waiting_for_them():
    from tjepa.masking import MaskingConfig, MaskSampler

    class SlowLoader:  # a batch every 0.1 s: the consumer below always waits
        position = 0

        def next_batch(self):
            time.sleep(0.1)
            self.position += 1
            return torch.randint(1, 50, (2, 32)), torch.tensor([32, 20])

    stream = train.BatchStream(SlowLoader(), MaskSampler(MaskingConfig("ul2"), seed=0),
                               lambda batch: ([batch], int(batch.target_valid.sum())))
    try:
        for _ in range(3):
            stream.next()
    finally:
        stream.close()
    assert stream.made >= 3 and stream.making_s >= 0.1 * stream.made
    assert stream.waiting_s >= 0.25  # three batches of 0.1 s, none made ahead


def test_resume_logs_identical_losses(tinytales_bins, tmp_path):
    config = train.load_config(None, tiny(tinytales_bins, "train.max_steps=12"))
    whole = train.train(config, tmp_path / "whole", progress=False)
    first = train.train(config, tmp_path / "split", stop_at=6, progress=False)
    assert first["step"] == 6
    resumed_config = train.load_config(tmp_path / "split" / "config.toml")
    train.train(resumed_config, tmp_path / "split", resume=True, progress=False)
    losses = [r["loss"] for r in train.read_metrics(tmp_path / "split")]
    assert losses == whole["losses"]  # bitwise, on CPU


def test_sigterm_saves_a_checkpoint_and_the_run_resumes_exactly(tinytales_bins, tmp_path):
    args = ["--max-steps", "40", *sum((["--set", s] for s in tiny(tinytales_bins)), [])]
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "tjepa.train", *args, "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "resume with" in err
    stopped = torch.load(run / "last.pt", weights_only=True)["step"]
    assert 3 <= stopped < 40
    resumed = run_cli("--resume", str(run), "--max-steps", "40")
    assert resumed.returncode == 0, resumed.stderr
    reference = train.train(train.load_config(None, tiny(tinytales_bins, "train.max_steps=40")),
                            tmp_path / "reference", progress=False)
    assert [r["loss"] for r in train.read_metrics(run)] == reference["losses"]


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(
        tinytales_bins, tmp_path, monkeypatch):
    from tjepa.jepa import JEPA

    forward, calls = JEPA.forward, []

    def poisoned(self, batch):
        loss_sum, count, regularizer = forward(self, batch)
        calls.append(1)
        return (loss_sum * (float("nan") if len(calls) == 7 else 1), count, regularizer)

    monkeypatch.setattr(JEPA, "forward", poisoned)
    config = train.load_config(None, tiny(tinytales_bins, "train.max_steps=20",
                                          "train.eval_interval=100"))
    with pytest.raises(train.TrainingError, match="not finite at step 7"):
        train.train(config, tmp_path / "run", progress=False)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 4


@pytest.mark.parametrize(("override", "message"), [
    ("model.width=3", "model: unknown key 'width'"),
    ("model.dim=\"big\"", "model.dim: expected an integer"),
    ("optim.lr=-1.0", "optim: lr must be > 0"),
    ("nonsense.key=1", "unknown key 'nonsense'"),
])
def test_bad_configs_name_the_key_and_the_file(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        train.load_config(None, [override])
    assert "default.toml" in str(info.value)


def test_cli_reports_a_folder_that_is_not_bins(tmp_path):
    (tmp_path / "notbins").mkdir()
    result = run_cli("--data", str(tmp_path / "notbins"), "--out", str(tmp_path / "run"),
                     "--set", "data.source=\"\"")
    assert result.returncode == 1
    assert "notbins: not a token bins folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_reports_a_bad_config_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\ndepth = 2\nwidht = 3\n")
    result = run_cli("--config", str(bad))
    assert result.returncode == 1
    assert "bad.toml: model: unknown key 'widht'" in result.stderr


def test_truncated_or_foreign_checkpoints_are_refused(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(train.TrainingError, match="not a tjepa checkpoint"):
        train.load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "foreign.pt").read_bytes()[:100])
    with pytest.raises(train.TrainingError, match="truncated or not a checkpoint"):
        train.load_checkpoint(tmp_path / "cut.pt")


@pytest.mark.parametrize("anti_collapse", ["ema", "vicreg", "sigreg"])
def test_two_process_ddp_matches_one_process_on_the_same_global_batch(
        tinytales_bins, tmp_path, anti_collapse):
    # The prediction loss is a sum over documents; VICReg's and SIGReg's statistics are sums
    # over all ranks' rows (jepa.sum_over_ranks): two ranks match one process either way.
    sets = sum((["--set", s] for s in tiny(tinytales_bins, "train.max_steps=6",
                                           f'optim.anti_collapse="{anti_collapse}"')), [])
    single = run_cli(*sets, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "tjepa.train", *sets, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300, env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = [r["loss"] for r in train.read_metrics(tmp_path / "one")]
    two = [r["loss"] for r in train.read_metrics(tmp_path / "two")]
    assert len(one) == len(two) == 6
    assert one == pytest.approx(two, rel=1e-4)
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["model"]
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


@pytest.mark.parametrize("scope", ["block", "network"])
def test_compiled_networks_give_the_eager_loss_and_gradients(scope):
    # Two batches, the second packed into a different number of rows (a recompile).
    from tjepa.masking import MaskingConfig, MaskSampler
    from tjepa.packing import pack

    config = train.load_config(None, [*TINY, "data.block_size=64", "masking.views=2",
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
        model = train.JEPA(config.model, config.optim)
        if compiled:
            train.compile_networks(model, scope)
        for batch in batches:
            loss_sum, count, _ = model(batch)
            (loss_sum / count).backward()
        results.append((float(loss_sum.detach() / count),
                        [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-4)
    for eager, compiled in zip(eager_grads, compiled_grads, strict=True):
        assert torch.allclose(eager, compiled, atol=1e-5, rtol=1e-3)


class HostWaits(TorchDispatchMode):
    """Records the operators in its block that make the host wait for a CUDA device: a
    scalar read back (``.item()``, ``bool(t)``, ``if t:``), an output whose size depends on
    the data (``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``), a comparison
    answered on the host (``equal``). Dispatch modes see the operators a CPU run calls, so
    these are caught here, before they reach a card."""

    aten = torch.ops.aten
    WAITING = {aten._local_scalar_dense.default, aten.nonzero.default, aten.argwhere.default,
               aten.masked_select.default, aten.equal.default, aten.is_nonzero.default,
               aten._unique2.default, aten.unique_consecutive.default, aten.unique_dim.default,
               aten.repeat_interleave.Tensor, aten.bincount.default}
    INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
                aten._index_put_impl_.default}

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.WAITING or (func in self.INDEXING and any(
                index is not None and index.dtype == torch.bool for index in args[1])):
            self.calls.append(str(func))
        return func(*args, **(kwargs or {}))


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
    ["optim.anti_collapse=\"ema\""],
    ["optim.anti_collapse=\"ema\"", "train.pack_length=256"],
    ["optim.anti_collapse=\"vicreg\"", "train.pack_length=256"],
    ["optim.anti_collapse=\"sigreg\"", "train.grad_accum=2"],
    ["optim.anti_collapse=\"ema\"", "train.pack_length=256", "train.recompute_activations=true"],
], ids=["ema-padded", "ema-packed", "vicreg-packed", "sigreg-accumulated", "ema-recomputed"])
def test_training_step_never_waits_for_the_device(overrides):
    # The host must queue step n+1 while the card runs step n (issue #7). Eager on the CPU,
    # with the fused AdamW that CUDA runs; masks are made ahead, as BatchStream does.
    from tjepa.bench import synthetic_documents
    from tjepa.jepa import make_optimizer

    device = torch.device("cpu")
    config = train.load_config(None, [*TINY, "model.vocab_size=60", *overrides])
    config = replace(config, model=train.resolve_model(config, device, 60))
    model, _, schedule, sampler, autocast = train.build_step_parts(config, device)
    optimizer = make_optimizer(model, config.optim, fused=True)
    documents = synthetic_documents(8, 96, 60, torch.Generator().manual_seed(0))
    parts, total_targets = train.step_parts(sampler(*documents), config, train.Distributed())
    for step in range(2):  # the first step also creates the optimizer's state
        with HostWaits() as waits:
            loss = train.training_step(model, model, optimizer, schedule, step, parts,
                                       total_targets, train.Distributed(), device, autocast,
                                       config.optim.grad_clip)
        assert waits.calls == [], f"step {step} waits for the device: {waits.calls}"
    assert torch.isfinite(loss)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_flex_block_masks_are_built_without_waiting_for_the_device(packed):
    # CUDA builds these in every step; the CPU can build them only without gradients.
    from tjepa.masking import MaskingConfig, MaskSampler
    from tjepa.model import attention_mask
    from tjepa.packing import pack

    batch = MaskSampler(MaskingConfig("ul2", views=2), seed=0)(
        torch.randint(1, 50, (6, 96)), torch.tensor([96, 80, 64, 50, 40, 30]))
    layout = pack(batch, 256)  # on the host, in BatchStream's thread
    with torch.no_grad(), HostWaits() as waits:
        if packed:
            attention_mask(layout.predictor_group, "flex", layout.predictor_sequence)
            attention_mask(torch.where(layout.context_valid, 0, -1), "flex",
                           layout.context_sequence)
        else:
            attention_mask(torch.where(batch.context_valid, 0, -1), "flex")
    assert waits.calls == []


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
    from tjepa.masking import MaskingConfig, MaskSampler
    from tjepa.packing import pack

    config = train.load_config(None, [*TINY, "model.depth=3", "model.vocab_size=50",
                                      'optim.anti_collapse="vicreg"'])
    batch = pack(MaskSampler(MaskingConfig("ul2", views=2), seed=0)(
        torch.randint(1, 50, (6, 64), generator=torch.Generator().manual_seed(0)),
        torch.tensor([64, 60, 50, 40, 30, 20])), row_length=128)

    def run(recompute: bool, compile_scope: str | None):
        torch.manual_seed(0)
        model = train.JEPA(config.model, config.optim)
        for network in (model.context_encoder, model.predictor):
            network.transformer.recompute = recompute
        if compile_scope:
            train.compile_networks(model, compile_scope)
        return _saved_bytes_and_gradients(model, batch)

    stored, stored_grads = run(False, None)
    recomputed, recomputed_grads = run(True, scope)
    # compiled: the tolerances of test_compiled_networks_give_the_eager_loss_and_gradients
    for a, b in zip(stored_grads, recomputed_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6 if scope is None else 1e-5,
                              rtol=1e-5 if scope is None else 1e-3)
    if scope is None:  # compiled graphs save their tensors out of these hooks' sight
        assert recomputed < stored / 2, (recomputed, stored)

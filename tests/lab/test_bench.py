"""The benchmarks run on a CPU and report what the README's performance table needs."""

from __future__ import annotations

import json

import pytest
import torch

from tjepa.lab import bench
from tjepa.masking import MaskingConfig, MaskSampler, forecast_batch
from tjepa.model import ModelConfig
from tjepa.packing import padding_share

TINY = ["model.dim=32", "model.depth=1", "model.heads=2", "model.predictor_dim=16",
        "model.predictor_depth=1", "model.predictor_heads=2", "data.block_size=64"]


def test_step_bench_prints_one_json_line_with_the_reported_fields(capsys):
    paddings = {}
    for pack_length in (0, 128):
        args = ["step", "--device", "cpu", "--batch", "4", "--views", "2", "--steps", "2",
                "--warmup", "1", "--no-compile", "--json"]
        for override in [*TINY, "train.pad_multiple=32", f"train.pack_length={pack_length}"]:
            args += ["--set", override]
        assert bench.main(args) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["device"] == "cpu" and result["mfu"] is None
        assert result["peak_mem_gib"] is None
        assert (result["batch"], result["views"], result["pad_multiple"], result["pack_length"]
                ) == (4, 2, 32, pack_length)
        assert result["tokens_per_s"] > 0 and result["step_ms"] > 0
        assert result["data_ms"] > 0 and result["data_wait_ms"] >= 0
        assert isinstance(result["tflops"], float)  # rounds to 0.0 for a model this small
        paddings[pack_length] = result["padding"]
    assert 0 < paddings[128] < paddings[0] < 1


def test_step_bench_sweeps_batch_sizes_with_one_model(capsys, monkeypatch):
    built, build = [], bench.TrainingStep

    def counting_build(*args):
        built.append(args)
        return build(*args)

    monkeypatch.setattr(bench, "TrainingStep", counting_build)
    args = ["step", "--device", "cpu", "--batch", "2,4", "--views", "1", "--steps", "1",
            "--warmup", "1", "--no-compile", "--json", "--profile", "1"]
    for override in TINY:
        args += ["--set", override]
    assert bench.main(args) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    assert [line["batch"] for line in lines] == [2, 4]
    assert all(line["host_syncs"] is None and line["device_busy"] is None  # CUDA only
               for line in lines)
    assert len(built) == 1
    assert captured.err.count("Self CPU time total") == 1  # the first batch size is profiled


def test_host_sync_count_reads_the_sync_debug_warnings_and_says_when_none_arrive():
    import warnings

    modes = []

    def sync(where: str) -> None:
        if modes[-1] == "warn":
            warnings.warn(f"called a synchronizing CUDA operation ({where})", stacklevel=2)

    def step() -> None:
        sync("item")
        sync("nonzero")
        warnings.warn("something else", stacklevel=1)

    counted = bench._count_host_syncs(step, modes.append, lambda: sync("control"))
    assert counted["count"] == 2 and len(counted["where"]) == 2  # two lines of step
    assert modes == ["warn", "default"]
    # a torch whose sync debug mode says nothing cannot report 0 syncs: it reports None
    silent = bench._count_host_syncs(step, lambda mode: None, lambda: None)
    assert silent is None


def test_step_bench_refuses_a_malformed_batch_list(capsys):
    for text in ("64,", "0", "a,b"):
        with pytest.raises(SystemExit) as stop:
            bench.main(["step", "--batch", text])
        assert stop.value.code == 2
        assert "expected positive batch sizes" in capsys.readouterr().err


def test_padding_share_counts_the_slots_rounding_adds():
    # two documents of 10 and 6 tokens, split after 4 and 3: context widths 4 and 3 (C = 4),
    # targets 6 and 3 (P = 6). Slots: 2·10 + 2·(2·4) + 2·6 = 48; real: 16 + 2·7 + 9 = 39.
    tokens = torch.arange(1, 21).view(2, 10)
    batch = forecast_batch(tokens, torch.tensor([10, 6]), torch.tensor([4, 3]), pad_multiple=1)
    assert abs(padding_share(batch) - 9 / 48) < 1e-9

    generator = torch.Generator().manual_seed(0)
    tokens, lengths = bench.synthetic_documents(16, 256, 100, generator)
    shares = {multiple: padding_share(
        MaskSampler(MaskingConfig("ul2", views=3), seed=0, pad_multiple=multiple)(tokens, lengths))
        for multiple in (1, 128)}
    assert shares[1] < shares[128]


def test_step_flops_count_the_encoder_students_mask_slots_and_head_not_a_predictor():
    # the example above: 16 document tokens; 7 context and 9 target tokens over 2 views
    tokens = torch.arange(1, 21).view(2, 10)
    masked = [forecast_batch(tokens, torch.tensor([10, 6]), torch.tensor([4, 3]),
                             pad_multiple=1)]
    config = ModelConfig(vocab_size=100, dim=8, depth=1, heads=2, predictor_dim=4,
                         predictor_depth=1, predictor_heads=2, mlp_ratio=4)

    def forward(tokens, seq, dim):  # one block: 12·d² weights at mlp_ratio 4
        return 2 * 12 * dim * dim * tokens + 4 * tokens * seq * dim

    target = forward(16, 8, 8)
    assert bench.step_flops(config, 2, 16, masked) == (
        target + 3 * forward(7, 3.5, 8) + 3 * forward(16, 8, 4))
    assert bench.step_flops(config, 2, 16, masked, has_predictor=False) == (
        target + 3 * forward(16, 8, 8) + 3 * 2 * 4 * 8 * 8 * 9)


def test_masking_bench_reports_a_median_time(capsys):
    assert bench.main(["masking", "--batch", "8", "--views", "2", "--iters", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bench"] == "masking" and result["ms_per_batch"] > 0
    assert result["pack_ms"] is None  # packing timed only when asked
    assert bench.main(["masking", "--batch", "8", "--views", "2", "--iters", "5",
                       "--pack-length", "512", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["pack_length"] == 512 and result["pack_ms"] > 0


def test_bench_table_reads_step_lines_from_a_log_and_writes_the_readme(tmp_path, capsys):
    cpu = {"bench": "step", "config": "configs/default.toml", "device": "cpu",
           "compile": False, "compile_scope": "block", "attention": "sdpa", "views": 1,
           "batch": 32, "pad_multiple": 1, "pack_length": 0, "padding": 0.2532,
           "step_ms": 490.96, "tokens_per_s": 11067.2, "tflops": 0.07, "mfu": None,
           "peak_mem_gib": None, "data_ms": 2.18, "data_wait_ms": 0.05, "host_syncs": None,
           "device_busy": None, "warmup_s": 1.1, "threads": 2}
    gpu = {**cpu, "device": "NVIDIA H200", "config": "configs/tinystories.toml",
           "compile": True, "recompute_activations": True, "attention": "flex", "views": 3,
           "batch": 64, "pack_length": 2048, "padding": 0.03, "step_ms": 65.3,
           "tokens_per_s": 183100.0, "tflops": 91.6, "mfu": 0.0926, "peak_mem_gib": 15.1,
           "host_syncs": {"count": 0, "where": []}, "device_busy": 0.97, "warmup_s": 84.0}
    del gpu["data_wait_ms"]  # lines from before the field existed still read
    log = tmp_path / "log.txt"
    log.write_text(f"== a command\nstep: 490.96 ms ...\n{json.dumps(cpu)}\n"
                   f'{{"bench": "masking"}}\n{json.dumps(gpu)}\n')
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- bench-gpu:start -->\nold\n<!-- bench-gpu:end -->\nb\n")
    assert bench.main(["table", str(log), "--readme", str(readme), "--marker", "bench-gpu"]) == 0
    table = capsys.readouterr().out.strip()
    assert table == bench.bench_table(bench.read_results([log]))
    header, _, cpu_row, gpu_row = table.splitlines()
    assert cpu_row == ("| cpu | default | 1 | 32 | padded | eager, sdpa | 491.0 | 11.1k | 0.07 "
                       "| — | — | 25% | 1 s | 0.1 ms | — | — |")
    assert gpu_row == ("| NVIDIA H200 | tinystories | 3 | 64 | packed, L 2048 | compiled "
                       "(block), flex, recompute | 65.3 | 183.1k | 91.6 | 9.3% | 15.1 GiB | 3% "
                       "| 84 s | — | 0 | 97% |")
    text = readme.read_text()
    assert table in text and "old" not in text and "--marker bench-gpu`" in text
    # on a CPU alone: no MFU, memory, syncs or busy columns, and slow speeds in full
    slow = bench.bench_table([{**cpu, "tokens_per_s": 133.4}])
    assert slow.splitlines()[0] == ("| device | config | views | batch | layout | path | ms/step "
                                    "| input tokens/s | TFLOP/s | padding | warm-up | data wait |")
    assert "| 133 |" in slow
    with pytest.raises(SystemExit):  # a file with no step lines is an error
        bench.main(["table", str(readme)])


def test_the_pairs_bench_times_a_whole_scoring_and_tables_it(tiny_run, tmp_path, capsys):
    from tjepa import minimal_pairs

    pairs = tmp_path / "pairs.jsonl"
    assert minimal_pairs.main(["--source", "tinytales", "--out", str(pairs),
                               "--per-paradigm", "5"]) == 0
    page = tmp_path / "page.md"
    page.write_text("<!-- bench-pairs:start -->\n<!-- bench-pairs:end -->\n")
    assert bench.main(["pairs", str(tiny_run), "--pairs", str(pairs), "--readme",
                       str(page)]) == 0
    row = page.read_text().splitlines()[-2]
    made = len(pairs.read_text().splitlines())
    assert row.startswith("| cpu (") and f"| tiny | jepa | {made} |" in row
    assert (tiny_run / "pairs-pairs.json").is_file()

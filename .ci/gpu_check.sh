#!/bin/bash
# The throughput checks of the training step on a card, in one call of the device tool (it is
# not part of CI). On a card, .ci/gpu_evidence.sh runs first; this one if time is left:
#   run(command="bash .ci/gpu_check.sh", carry=[".whl", "data/sample"], timeout_s=520)
# (its caps add up to 570 s: the last checks, the least needed, may be cut)
# .whl holds the wheels that machine lacks (rotary-embedding-torch); data/sample the bins of
# ../shared/data/tinystories_valid_sample.txt, made here with
#   python -m tjepa.data --source ../shared/data/tinystories_valid_sample.txt --out data/sample
# Everything it prints is also in $OUT/log.txt; the bench lines are gathered in $OUT/bench.jsonl
# and set in a table in $OUT/table.md after each command (for the README:
#   python -m tjepa.lab.bench table bench.jsonl --readme docs/performance.md --marker bench-gpu).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
    | tee -a "$OUT/gpu.txt"
run() {  # run CAP COMMAND...: capped, logged; the bench's JSON lines gathered after each
    echo "== $*" | tee -a "$OUT/log.txt"
    timeout "$@" 2>&1 | tee -a "$OUT/log.txt" | grep -v '^{"bench"' | tail -n 8
    grep -h '^{"bench"' "$OUT/log.txt" > "$OUT/bench.jsonl"
    python3 -m tjepa.lab.bench table "$OUT/bench.jsonl" > "$OUT/table.md" 2>/dev/null
}

# Most important first: whatever the cap cuts short, what ran is in $OUT. Every bench line
# reports peak memory and the host syncs counted in one step (torch's sync debug mode).
bench="python3 -m tjepa.lab.bench step --config configs/tinystories.toml --views 3 --json"
packed="--set train.pack_length=2048"

# 1. Compiled, the seed's workload: padded rows at batch 64 (the goal: >= 150k input
#    tokens/s), then packed rows swept up the batch sizes with one compiled model until the
#    peak passes 24 GiB (the goal: >= 400k within 24 GiB). The first batch of each is
#    profiled (stderr, in log.txt): why is the packed step slower per token at batch 64?
run 100 $bench --batch 64 --compile --steps 30 --warmup 8 --profile 3
run 150 $bench --batch 64,128,160,192,224 --compile --steps 15 --warmup 6 $packed \
    --max-memory-gib 24 --profile 3

# 2. 200 steps of configs/tinystories.toml on the TinyStories sample.
run 110 python3 -m tjepa.train --config configs/tinystories.toml --data data/sample \
    --max-steps 200 --out "$OUT/ts_sample" --set train.log_interval=20 \
    --set train.eval_interval=100 --set monitor.interval=100
rm -f "$OUT"/*/*.pt

# 3. Packed rows with recomputed activations (train.recompute_activations): the blocks keep
#    only their inputs, so batches far past 224 may fit in 24 GiB — the other way to 400k.
run 130 $bench --batch 256,512,1024 --compile --steps 8 --warmup 3 $packed \
    --set train.recompute_activations=true --max-memory-gib 24

# 4. Packed and padded batches give the same loss with compiled flex_attention on the card
#    (fp32): the compiled kernels skip mask_mod on "full" blocks, the eager one never does.
run 40 python3 - <<'PY'
import torch
from tjepa.lab.bench import synthetic_documents
from tjepa.jepa import JEPA
from tjepa.masking import MaskingConfig, MaskSampler
from tjepa.model import ModelConfig
from tjepa.packing import pack
from tjepa.step import compile_networks
torch.manual_seed(0)
config = ModelConfig(vocab_size=1000, dim=128, depth=2, heads=4, predictor_dim=128,
                     predictor_depth=2, predictor_heads=4, attention="flex")
model = JEPA(config).cuda()
compile_networks(model)
batch = MaskSampler(MaskingConfig("ul2", views=3))(
    *synthetic_documents(16, 256, 1000, torch.Generator().manual_seed(0)))
with torch.no_grad():
    losses = [loss_sum / count for loss_sum, count, _ in
              (model(b.to("cuda")) for b in (batch, pack(batch, 2048)))]
print(f"compiled flex on cuda: padded loss {float(losses[0]):.6f}, packed {float(losses[1]):.6f}, "
      f"relative difference {float((losses[0] - losses[1]).abs() / losses[0]):.2e}")
PY

# 5. Eager (SDPA), packed at batch 64: the path kept for reading and debugging.
run 40 $bench --batch 64 --no-compile --steps 10 --warmup 3 $packed

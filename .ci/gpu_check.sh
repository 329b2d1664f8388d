#!/bin/bash
# The GPU checks of issue 7 in one call of the device tool (it is not part of CI):
#   run(command="bash .ci/gpu_check.sh", carry=[".whl", "data/sample"], timeout_s=600)
# .whl holds the wheels that machine lacks (rotary-embedding-torch); data/sample the bins of
# ../shared/data/tinystories_valid_sample.txt, made here with
#   python -m tjepa.data --source ../shared/data/tinystories_valid_sample.txt --out data/sample
# Everything it prints is also in $OUT/log.txt; the bench lines are gathered in $OUT/bench.jsonl.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
    | tee -a "$OUT/gpu.txt"
bench="python3 -m tjepa.bench step --config configs/tinystories.toml --views 3 --json"
run() { echo "== $*"; timeout "$@" 2>&1 | tee -a "$OUT/log.txt" | tail -3; }
# The caps add up to the device tool's 600 s for one command.
run 60 $bench --batch 64 --no-compile --steps 10 --warmup 3
run 150 $bench --batch 64 --compile --steps 30 --warmup 12
run 120 $bench --batch 256 --compile --steps 20 --warmup 12
run 110 $bench --batch 512 --compile --steps 15 --warmup 12
run 150 python3 -m tjepa.train --config configs/tinystories.toml --data data/sample \
    --max-steps 200 --out "$OUT/ts_sample" --set train.log_interval=20 \
    --set train.eval_interval=100 --set monitor.interval=100
rm -f "$OUT"/*/*.pt
grep -h '^{"bench"' "$OUT/log.txt" > "$OUT/bench.jsonl"

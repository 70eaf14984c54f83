#!/usr/bin/env bash
# Issue 5's GPU checks in one run, sized for a lent GPU's 15 minutes (the device tool of this workplace).
#
#   bash bench/gpu_checks.sh prepare    # here, once: the wheels the GPU image lacks (.whl) and the shared corpora
#                                       # combined (.device/corpus.jsonl); both folders are git-ignored locally
#   bash bench/gpu_checks.sh            # there: run(command=..., carry=[".whl", ".device"], timeout_s=580)
#   DEVICE=cpu EPOCHS=1 SPEED_EPOCHS=1 bash bench/gpu_checks.sh   # here: a dry run of the script itself
#   ONLY="seed400 train_speed" ARCHS=seed bash bench/gpu_checks.sh  # some steps again (ARCHS: train_speed's)
#
# On the GPU it checks that cuDNN holds each LSTM's weights in one flat buffer, times the seed's full recipe (400
# epochs, validation and the checkpoints at 200 and 400 included; target: under 60 s), then runs bench/train_speed.py
# for seed, lstm and gpt and bench/generate_speed.py on CUDA. Every result is a JSON line on stdout and in
# $OUT/results/, with the seed run's metrics in $OUT/seed400_metrics.jsonl. Each step has its own time limit; one
# that fails or runs out says so ("FAILED step rc=N") and the next one runs: there is one GPU run to spend.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = prepare ]; then
    for ignored in /.whl/ /.device/; do
        grep -qxF "$ignored" .git/info/exclude || echo "$ignored" >>.git/info/exclude
    done
    # The image has torch, numpy, safetensors, tqdm, lxml and matplotlib; training also reads text through ftfy.
    rm -rf .whl  # one version of each: two would stop the install there
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d .whl ftfy wcwidth
    mkdir -p .device
    cat ../shared/corpora/*.jsonl >.device/corpus.jsonl
    ls -l .whl .device
    exit 0
fi

[ -f .device/corpus.jsonl ] && ls .whl/*.whl >/dev/null || { echo "run 'bash bench/gpu_checks.sh prepare' here first"; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1 NEURALDA_BENCH_RESULTS="${OUT:-/tmp/out}/results"
mkdir -p "$NEURALDA_BENCH_RESULTS"
DEVICE="${DEVICE:-cuda}" EPOCHS="${EPOCHS:-400}"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
set +e  # from here on a step's failure is reported and the next step runs

step() {  # step NAME SECONDS COMMAND...: the command under a time limit; a failure is one line, not the end
    local name=$1 limit=$2
    shift 2
    [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" ${name%% *} "* ]] || return 0
    timeout "$limit" "$@"
    local rc=$?
    [ "$rc" = 0 ] || echo "FAILED $name rc=$rc$([ "$rc" = 124 ] && echo " (over ${limit}s)")"
}

# cuDNN copies an LSTM's weights at every call (and warns) unless they lie in one flat buffer; the seed's layers keep
# Keras' one bias per gate, the second cuDNN bias being a zero buffer (SingleBiasLSTM).
step cudnn_flat 60 python3 -c '
import json, sys, warnings
import torch
from neuralda.models import build_model
device = sys.argv[1]
model = build_model("seed", 9566, 512, 3, 0.3).to(device)
lstms = [m for m in model.modules() if isinstance(m, torch.nn.LSTM)]
flat = [len({w.untyped_storage().data_ptr() for w in m._flat_weights}) == 1 for m in lstms]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    logits, _ = model(torch.randint(0, 9566, (8, 30), device=device))
    logits.float().mean().backward()
print(json.dumps({"bench": "cudnn_flat", "device": device, "lstms": len(lstms), "flat": flat,
                  "warnings": sorted({str(w.message)[:120] for w in caught})}))
' "$DEVICE"

rm -rf /tmp/seed400
start=$(date +%s.%N)
step seed400 180 python3 -m neuralda train .device/corpus.jsonl --arch seed --epochs "$EPOCHS" --device "$DEVICE" \
    -o /tmp/seed400 -q
end=$(date +%s.%N)
if [ -s /tmp/seed400/metrics.jsonl ]; then  # a run stopped in its first epoch has none to summarise
    cp /tmp/seed400/metrics.jsonl "${OUT:-/tmp/out}/seed400_metrics.jsonl"
    python3 -c '
import json, sys
sys.path.insert(0, "bench")
from common import report
rows = [json.loads(line) for line in open("/tmp/seed400/metrics.jsonl")]
best = min(rows, key=lambda r: r["val_ppl"])
report("seed400", {"device": rows[0]["device"], "wall_s": round(float(sys.argv[2]) - float(sys.argv[1]), 1),
                   "epochs": len(rows), "epoch_seconds": round(sum(r["seconds"] for r in rows), 1),
                   "val_seconds": round(sum(r["val_seconds"] for r in rows), 1),
                   "best_epoch": best["epoch"], "best_val_ppl": best["val_ppl"],
                   "val_ppl_at": {r["epoch"]: r["val_ppl"] for r in rows if r["epoch"] in (50, 100, 200, 400)}})
' "$start" "$end"
    # The blog's page: held-out perplexity by epoch, poems after 200 and 400 epochs, how much of them is copied.
    step report 90 python3 -m neuralda report /tmp/seed400 -o "${OUT:-/tmp/out}/report/seed400.md" --force
fi

for arch in ${ARCHS:-seed lstm gpt}; do
    step "train_speed $arch" 90 python3 bench/train_speed.py --arch "$arch" --device "$DEVICE" --corpus .device/corpus.jsonl \
        --epochs "${SPEED_EPOCHS:-20}" --rounds "${SPEED_ROUNDS:-2}"
done
step generate_speed 120 python3 bench/generate_speed.py --device "$DEVICE"

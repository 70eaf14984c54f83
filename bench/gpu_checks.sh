#!/usr/bin/env bash
# Issue 5's GPU checks in one run, sized for a lent GPU's 15 minutes (the device tool of this workplace).
#
#   bash bench/gpu_checks.sh prepare    # here, once: the wheels the GPU image lacks (.whl) and the shared corpora
#                                       # combined (.device/corpus.jsonl); both folders are git-ignored locally
#   bash bench/gpu_checks.sh            # there: run(command=..., carry=[".whl", ".device"], timeout_s=540)
#   DEVICE=cpu EPOCHS=1 bash bench/gpu_checks.sh   # here: a dry run of the script itself
#
# On the GPU it times the seed's full recipe (400 epochs, validation and the checkpoints at 200 and 400 included;
# target: under 60 s), then bench/train_speed.py for seed, lstm and gpt and bench/generate_speed.py on CUDA. Every
# result is a JSON line on stdout and in $OUT/results/, with the seed run's metrics in $OUT/seed400_metrics.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = prepare ]; then
    for ignored in /.whl/ /.device/; do
        grep -qxF "$ignored" .git/info/exclude || echo "$ignored" >>.git/info/exclude
    done
    # The image has torch, numpy, safetensors, tqdm, lxml and matplotlib; training also reads text through ftfy.
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

start=$(date +%s.%N)
rm -rf /tmp/seed400
python3 -m neuralda train .device/corpus.jsonl --arch seed --epochs "$EPOCHS" --device "$DEVICE" -o /tmp/seed400 -q
end=$(date +%s.%N)
cp /tmp/seed400/metrics.jsonl "${OUT:-/tmp/out}/seed400_metrics.jsonl"
python3 - "$start" "$end" <<'EOF' | tee -a "$NEURALDA_BENCH_RESULTS/seed400.jsonl"
import json, sys
rows = [json.loads(line) for line in open("/tmp/seed400/metrics.jsonl")]
best = min(rows, key=lambda r: r["val_ppl"])
print(json.dumps({"bench": "seed400", "wall_s": round(float(sys.argv[2]) - float(sys.argv[1]), 1), "epochs": len(rows),
                  "best_epoch": best["epoch"], "best_val_ppl": best["val_ppl"],
                  "val_ppl_at": {r["epoch"]: r["val_ppl"] for r in rows if r["epoch"] in (50, 100, 200, 400)}}))
EOF

for arch in seed lstm gpt; do
    python3 bench/train_speed.py --arch "$arch" --device "$DEVICE" --corpus .device/corpus.jsonl
done
python3 bench/generate_speed.py --device "$DEVICE"

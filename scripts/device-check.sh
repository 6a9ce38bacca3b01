#!/usr/bin/env bash
# The GPU checks in one go, on a machine with a CUDA GPU (make device-check; OUT=folder, default
# outputs/device-check/), in at most 8 minutes:
#   pytest      pytest -m gpu (tests/test_gpu.py): its log and a JUnit XML
#   train       a 2-epoch focalnet-train trainer=gpu run on digits into <out>/train (its summary.json)
#   bench       focalnet-bench of focalnet_tiny_srf at 224 px, batch 64, fp32/bf16 x eager/compile: <out>/bench.json
#   timm        ../shared/bench/peer_timm.py, where it exists, on the GPU: same weights -> same logits as timm's
#               FocalNet, and the training speed ratio in bf16: <out>/timm.log
# and <out>/device-check.json: each step's status, exit code and wall time, the GPU's name and memory.
# A failed step is recorded and the later ones still run; the exit code is 1 if any step failed or timed out.
# Without a CUDA GPU it prints one line and exits 0: there is nothing to check.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=$ROOT/.venv/bin/python
BIN=$ROOT/.venv/bin
if [[ ! -x $PY ]]; then
    echo "device-check: no $ROOT/.venv (make install creates it)" >&2
    exit 2
fi
INFO=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()), torch.__version__)' 2>/dev/null) || INFO="0 (not importable)"
read -r HAS_CUDA TORCH_VERSION <<<"$INFO"
if [[ $HAS_CUDA != 1 ]]; then
    echo "device-check: no CUDA GPU here (torch $TORCH_VERSION, CPU only); nothing to check"
    exit 0
fi

OUT=${1:-outputs/device-check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT"
export WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1
BUDGET_S=${DEVICE_CHECK_BUDGET_S:-470}  # the whole check stays under 8 minutes: each step gets at most what is left
START=$(date +%s)
STEPS=$(mktemp)
trap 'rm -f "$STEPS"' EXIT
failed=0

now() { date +%s.%N; }

# record NAME STATUS EXIT_CODE WALL_S LOG NOTE
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$STEPS"; }

# step NAME LIMIT_S LOG COMMAND...: COMMAND under `timeout`, its output into LOG; a failure is recorded, not fatal.
step() {
    local name=$1 limit=$2 log=$3
    shift 3
    local left=$((START + BUDGET_S - $(date +%s)))
    if ((limit > left)); then limit=$left; fi
    if ((limit < 10)); then
        record "$name" "not run" "" 0 "" "no time left of the ${BUDGET_S} s budget"
        echo "device-check: $name not run: no time left"
        failed=1
        return 0
    fi
    echo "device-check: $name (at most ${limit} s) ..."
    local t0 rc=0 status
    t0=$(now)
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1 || rc=$?
    local wall
    wall=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    case $rc in
        0) status=passed ;;
        124 | 137) status="timed out" ;;
        *) status=failed ;;
    esac
    [[ $status == passed ]] || failed=1
    record "$name" "$status" "$rc" "$wall" "$log" ""
    echo "device-check: $name $status in ${wall} s ($(tail -n 1 "$log" | cut -c1-160))"
}

# (a) the GPU tests
step pytest 180 "$OUT/pytest-gpu.log" \
    "$BIN/pytest" -m gpu -q -rs -p no:cacheprovider --junitxml="$OUT/pytest-gpu.xml" tests

# (b) a 2-epoch training run on the GPU (precision auto: bf16-mixed where the GPU has it)
rm -rf "$OUT/train"
step train 60 "$OUT/train.log" \
    "$BIN/focalnet-train" trainer=gpu trainer.max_epochs=2 logger=csv callbacks.progress_bar=null \
    "hydra.run.dir=$OUT/train"

# (c) throughput, FLOP/s and peak memory; fewer timed steps than the defaults, so that the two compiles fit the budget
step bench 200 "$OUT/bench.log" \
    "$BIN/focalnet-bench" --model focalnet_tiny_srf --img 224 --batch 64 --precision fp32,bf16 --mode eager,compile \
    --device cuda --steps 5 --warmup 2 --repeats 3 --json "$OUT/bench.json"

# (d) against timm, where the comparison script is at hand. It runs on whatever device torch defaults to, so a small
# wrapper makes that the GPU, turns TF32 off (timm's 1x1 convolutions would take it; the logit check is fp32) and
# waits for the GPU at each reading of the step clock. timm comes without its dependencies (pip --no-deps): plain
# `pip install timm` would pull another torch. Where pip cannot fetch it (no network), the step is skipped.
PEER=""
for candidate in "${PEER_TIMM:-}" "$ROOT/../shared/bench/peer_timm.py" "$ROOT/shared/bench/peer_timm.py"; do
    if [[ -n $candidate && -f $candidate ]]; then PEER=$candidate; break; fi
done
export PEER_CACHE=${PEER_CACHE:-${HOME:-/tmp}/.cache/focalnet-peer}  # where peer_timm.py looks for timm
if [[ -z $PEER ]]; then
    record timm skipped "" 0 "" "no ../shared/bench/peer_timm.py here"
    echo "device-check: timm skipped: no ../shared/bench/peer_timm.py"
elif [[ ! -d $PEER_CACHE/site/timm ]] && ! {
    wheels=()
    if compgen -G "$ROOT/.whl/timm-*.whl" >/dev/null; then wheels=(--no-index --find-links "$ROOT/.whl"); fi
    timeout 60 "$PY" -m pip install -q --no-deps "${wheels[@]}" --target "$PEER_CACHE/site" timm huggingface_hub \
        safetensors >"$OUT/timm.log" 2>&1
}; then
    record timm skipped "" 0 "$OUT/timm.log" "timm is not installed and pip could not fetch it (no network?)"
    echo "device-check: timm skipped: timm could not be installed (see $OUT/timm.log)"
else
    step timm 60 "$OUT/timm.log" "$PY" -c '
import runpy, sys, time
import torch
torch.set_default_device("cuda")
torch.backends.cudnn.allow_tf32 = False
clock = time.perf_counter
def synced():
    torch.cuda.synchronize()
    return clock()
time.perf_counter = synced
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
' "$PEER" --model focalnet_tiny_srf --img 224 --batch 64 --precision bf16
fi

# (e) the summary
if "$PY" - "$STEPS" "$OUT" "$START" <<'EOF'
import json, re, shutil, subprocess, sys, time
from pathlib import Path

import torch

steps_file, out, start = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
steps = []
for line in Path(steps_file).read_text().splitlines():
    name, status, code, wall, log, note = line.split("\t")
    steps.append({"step": name, "status": status, "exit_code": int(code) if code else None, "wall_s": float(wall),
                  "log": log or None, **({"note": note} if note else {})})
gpus = []
if shutil.which("nvidia-smi"):
    query = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]
    result = subprocess.run(query, capture_output=True, text=True)
    gpus = [dict(zip(("name", "memory_total"), (v.strip() for v in row.split(",")))) for row in result.stdout.splitlines()
            if row.strip()]
if not gpus:
    gpus = [{"name": torch.cuda.get_device_name(i),
             "memory_total": f"{torch.cuda.get_device_properties(i).total_memory // 2**20} MiB"}
            for i in range(torch.cuda.device_count())]
report = {"ok": all(s["status"] in ("passed", "skipped") for s in steps), "gpus": gpus, "torch": torch.__version__,
          "cuda": torch.version.cuda, "wall_s": round(time.time() - start, 1), "steps": steps}
timm_log = out / "timm.log"
if any(s["step"] == "timm" and s["status"] != "skipped" for s in steps) and timm_log.exists():
    text = timm_log.read_text()
    diff = re.search(r"max\|logit diff\| = (\S+) \((\w+)\)", text)
    ratio = re.search(r"speed ratio project/timm[^:]*: (\S+)", text)
    report["timm"] = {"max_logit_diff": float(diff[1]) if diff else None, "same_logits": diff[2] == "same" if diff
                      else None, "train_speed_ratio_bf16": float(ratio[1]) if ratio else None}
train_summary = out / "train" / "summary.json"
if train_summary.exists():
    summary = json.loads(train_summary.read_text())
    report["train"] = {k: summary.get(k) for k in ("status", "precision", "wall_time_s")}
    report["train"]["test/acc_top1"] = (summary.get("metrics") or {}).get("test/acc_top1")
(out / "device-check.json").write_text(json.dumps(report, indent=2) + "\n")
EOF
then :; else echo "device-check: the summary could not be written"; failed=1; fi
echo "device-check: $( ((failed)) && echo "FAILED" || echo "all passed"); see $OUT/device-check.json"
exit "$failed"

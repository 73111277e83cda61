#!/usr/bin/env bash
# jaxjac on a GPU, offline, in under 8 minutes: install, benchmark, converter agreement with
# TF32 on and off, and an end-to-end `jaxjac jacobian` over 10M synthetic (1, 224) samples.
#
#   bash bench/gpu.sh                 # from anywhere; needs CUDA JAX + CUDA torch already installed
#
# Environment knobs (defaults in brackets):
#   PYTHON [python3]   BENCH_DEVICE [gpu] (cpu: a dry run of this script anywhere)
#   BENCH_MODELS [seed-cnn,wide-cnn]   BENCH_ARGS [extra flags for python -m bench]
#   E2E_N [10000000]   E2E_DIR [/tmp/jaxjac-e2e] (needs 2 x E2E_N x 896 bytes of disk: 18 GB for 10M)
#   SKIP_INSTALL / SKIP_TESTS / SKIP_BENCH / SKIP_E2E [0]
# Everything (logs, JSON, Markdown) lands in bench/results/; the script exits non-zero if a step failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$(command -v "${PYTHON:-python3}")"
DEVICE="${BENCH_DEVICE:-gpu}"
MODELS="${BENCH_MODELS:-seed-cnn,wide-cnn}"
E2E_N="${E2E_N:-10000000}"
E2E_DIR="${E2E_DIR:-/tmp/jaxjac-e2e}"
OUT="$ROOT/bench/results"
STAMP="$(date +%Y-%m-%d-%H%M%S)"
mkdir -p "$OUT"
LOG="$OUT/gpu-$STAMP.log"
SUMMARY="$OUT/gpu-$STAMP-summary.txt"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false

T0=$SECONDS
BUDGET="${BUDGET_S:-460}"  # the whole script; each step gets at most what is left of it
FAILED=()
step() { echo; echo "=== [$(date +%H:%M:%S) +$((SECONDS - T0))s] $*"; }
record() { echo "$1" | tee -a "$SUMMARY"; }
# run NAME TIMEOUT CMD...: never aborts the script; records PASS/FAIL/TIMEOUT/SKIPPED with the duration.
run() {
    local name="$1" limit="$2" start=$SECONDS rc=0 left
    shift 2
    left=$((BUDGET - (SECONDS - T0)))
    if [[ $left -lt 15 ]]; then record "SKIPPED  $name (the ${BUDGET} s budget is spent)"; FAILED+=("$name"); return 0; fi
    [[ $limit -gt $left ]] && limit=$left
    timeout --kill-after=10 "$limit" "$@" || rc=$?
    if [[ $rc -eq 0 ]]; then record "PASS     $name ($((SECONDS - start)) s)"
    elif [[ $rc -eq 124 || $rc -eq 137 ]]; then record "TIMEOUT  $name (limit ${limit} s)"; FAILED+=("$name")
    else record "FAIL     $name (exit $rc, $((SECONDS - start)) s)"; FAILED+=("$name"); fi
}
# pip for $PY, with or without pip inside its environment; never touches the network.
if "$PY" -m pip --version >/dev/null 2>&1; then PIP=("$PY" -m pip); else PIP=(pip --python "$PY"); fi
PIP+=(--disable-pip-version-check)
cleanup() { rm -rf "$E2E_DIR"; }
trap cleanup EXIT

step "environment"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" - <<'PYEOF'
import sys, jax, torch
print("python", sys.version.split()[0], "| jax", jax.__version__, jax.devices(), "| torch", torch.__version__,
      "cuda", torch.cuda.is_available())
PYEOF

step "install (offline)"
if [[ "${SKIP_INSTALL:-0}" == 1 ]]; then
    echo "SKIP_INSTALL=1: using the jaxjac already importable"
else
    if compgen -G "bench/wheels/*.whl" >/dev/null; then
        run "install wheels from bench/wheels" 120 "${PIP[@]}" install --no-index --no-deps --find-links bench/wheels \
            bench/wheels/*.whl
    fi
    run "pip install --no-deps -e ." 120 "${PIP[@]}" install --no-index --no-deps --no-build-isolation -e .
fi
if ! "$PY" -c "import jaxjac.converters, jaxjac.cli" 2>/dev/null; then
    run "pip install --no-deps . (non-editable fallback)" 120 "${PIP[@]}" install --no-index --no-deps --no-build-isolation .
fi
if ! "$PY" -c "import jaxjac.converters, jaxjac.cli" 2>/dev/null; then
    # No setuptools offline: lay the package out as setup.py would (converters/ is jaxjac.converters).
    SHIM="$(mktemp -d)"
    cat > "$SHIM/sitecustomize.py" <<PYEOF
import importlib.util, sys
class _Converters:  # converters/ is installed as jaxjac.converters (see pyproject.toml)
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "jaxjac.converters":
            return importlib.util.spec_from_file_location(
                name, "$ROOT/converters/__init__.py", submodule_search_locations=["$ROOT/converters"])
        return None
sys.meta_path.insert(0, _Converters)
PYEOF
    export PYTHONPATH="$SHIM:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    record "NOTE     jaxjac not installable offline; using PYTHONPATH shim $SHIM"
fi
"$PY" -c "import jaxjac; print('jaxjac', jaxjac.__version__, jaxjac.__file__)"
"$PY" -c "import captum" 2>/dev/null || echo "note: captum missing; the Saliency row uses the equivalent torch code"

if [[ "${SKIP_BENCH:-0}" != 1 ]]; then
    step "benchmark: python -m bench --device $DEVICE --models $MODELS"
    # shellcheck disable=SC2086
    run "python -m bench --device $DEVICE" 220 "$PY" -m bench --device "$DEVICE" --models "$MODELS" \
        --timeout 90 --tag gpu-run ${BENCH_ARGS:-}
fi

if [[ "${SKIP_TESTS:-0}" != 1 ]]; then
    # jaxjac asks for float32 explicitly, so the agreement tests must pass whatever the global TF32 setting.
    step "converter agreement tests, TF32 off"
    run "pytest architectures+jacobian, TF32 off" 75 env NVIDIA_TF32_OVERRIDE=0 JAX_DEFAULT_MATMUL_PRECISION=highest \
        "$PY" -m pytest -q -x -p no:cacheprovider tests/test_architectures.py tests/test_jacobian.py \
        --junitxml "$OUT/gpu-$STAMP-tests-tf32-off.xml"
    step "converter agreement tests, TF32 on (JAX and torch global defaults set to TF32)"
    run "pytest architectures+jacobian, TF32 on" 75 env JAX_DEFAULT_MATMUL_PRECISION=tensorfloat32 \
        TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 \
        "$PY" -m pytest -q -x -p no:cacheprovider tests/test_architectures.py tests/test_jacobian.py \
        --junitxml "$OUT/gpu-$STAMP-tests-tf32-on.xml"
fi

if [[ "${SKIP_E2E:-0}" != 1 ]]; then
    step "end to end: jaxjac jacobian on $E2E_N x (1, 224) samples from disk"
    mkdir -p "$E2E_DIR"
    run "e2e: write the artifact and X.npy" 90 "$PY" - "$E2E_DIR" "$E2E_N" <<'PYEOF'
import sys, time, numpy as np, jaxjac
from bench.models import build
out, n = sys.argv[1], int(sys.argv[2])
net = build("seed-cnn")
jaxjac.save(jaxjac.convert(net, np.zeros((1, 1, 224), np.float32)), f"{out}/seed-cnn.jaxjac")
start = time.perf_counter()
X = np.lib.format.open_memmap(f"{out}/X.npy", mode="w+", dtype=np.float32, shape=(n, 1, 224))
rng, chunk = np.random.default_rng(0), 1 << 20
for s in range(0, n, chunk):
    X[s : s + chunk] = rng.standard_normal((min(chunk, n - s), 1, 224), dtype=np.float32)
X.flush()
print(f"wrote {X.nbytes / 1e9:.2f} GB in {time.perf_counter() - start:.1f} s")
PYEOF
    E2E_START=$(date +%s.%N)
    JAXJAC=("$(dirname "$PY")/jaxjac")
    [[ -x "${JAXJAC[0]}" ]] || JAXJAC=("$PY" -c "import sys; from jaxjac.cli import main; sys.exit(main(sys.argv[1:]))")
    if "${JAXJAC[@]}" jacobian --help >/dev/null 2>&1; then
        run "e2e: jaxjac jacobian --target predicted" 150 "${JAXJAC[@]}" jacobian "$E2E_DIR/seed-cnn.jaxjac" \
            "$E2E_DIR/X.npy" -o "$E2E_DIR/J.npy" --target predicted
        HOW="jaxjac jacobian CLI"
    else
        echo "note: 'jaxjac jacobian' is not available in this checkout; timing the same job through the Python API"
        run "e2e: jaxjac.jacobian API (CLI missing)" 150 "$PY" - "$E2E_DIR" <<'PYEOF'
import sys, numpy as np, jaxjac
d = sys.argv[1]
X = np.load(f"{d}/X.npy", mmap_mode="r")
J = np.lib.format.open_memmap(f"{d}/J.npy", mode="w+", dtype=np.float32, shape=X.shape)
model, chunk = jaxjac.load(f"{d}/seed-cnn.jaxjac"), 1 << 20
for s in range(0, len(X), chunk):
    J[s : s + chunk] = jaxjac.jacobian(model, np.asarray(X[s : s + chunk]), target="predicted", batch_size=65536)
J.flush()
PYEOF
        HOW="python API (CLI missing)"
    fi
    E2E_END=$(date +%s.%N)
    "$PY" - "$E2E_DIR" "$E2E_START" "$E2E_END" "$HOW" "$OUT/gpu-$STAMP-e2e.json" <<'PYEOF' | tee -a "$SUMMARY"
import json, os, sys
d, t0, t1, how, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
x_bytes = os.path.getsize(f"{d}/X.npy")
j_bytes = os.path.getsize(f"{d}/J.npy") if os.path.exists(f"{d}/J.npy") else 0
n = (x_bytes - 128) // (224 * 4)
s = t1 - t0
res = {"how": how, "samples": n, "seconds": s, "read_GB": x_bytes / 1e9, "written_GB": j_bytes / 1e9,
       "samples_per_s": n / s, "bandwidth_GB_per_s": (x_bytes + j_bytes) / 1e9 / s, "complete": j_bytes >= x_bytes}
json.dump(res, open(out, "w"), indent=1)
print(f"e2e ({how}): {n:,} samples in {s:.1f} s = {n / s:,.0f} samples/s, "
      f"{res['bandwidth_GB_per_s']:.2f} GB/s read+write{'' if res['complete'] else ' (OUTPUT INCOMPLETE)'}")
PYEOF
fi

step "done in $((SECONDS - T0)) s; summary:"
cat "$SUMMARY"
ls -l "$OUT" | tail -n 20
if [[ ${#FAILED[@]} -gt 0 ]]; then echo "failed steps: ${FAILED[*]}"; exit 1; fi

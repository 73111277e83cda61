#!/usr/bin/env bash
# jaxjac on a GPU, offline, in under 8 minutes: install, benchmark, an end-to-end `jaxjac jacobian`
# over 10M synthetic (1, 224) samples against its disk, PCIe and compute bounds, and the converter
# agreement tests with TF32 on and off.
#
#   bash bench/gpu.sh                 # from anywhere; needs CUDA JAX + CUDA torch already installed
#
# Environment knobs (defaults in brackets):
#   PYTHON [python3]   BENCH_DEVICE [gpu] (cpu: a dry run of this script anywhere)
#   BENCH_MODELS [seed-cnn]   BENCH_BASELINES [every baseline, or a comma list]
#   WIDE_MODELS [wide-cnn] (the rows the targets need; '' skips)
#   BENCH_ARGS [extra flags for python -m bench]
#   E2E_N [10000000]   E2E_DIR [/tmp/jaxjac-e2e] (needs 3 x E2E_N x 896 bytes of disk: 27 GB for 10M)
#   SKIP_INSTALL / SKIP_TESTS / SKIP_BENCH / SKIP_E2E [0]
# Everything (logs, JSON, Markdown) lands in bench/results/; the script exits non-zero if a step failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$(command -v "${PYTHON:-python3}")"
DEVICE="${BENCH_DEVICE:-gpu}"
MODELS="${BENCH_MODELS:-seed-cnn}"
WIDE="${WIDE_MODELS-wide-cnn}"
WIDE_BASELINES="${WIDE_BASELINES:-torch best,torch best + compile,torch best (pinned host),jaxjac vmap-jacrev,jaxjac batched-vjp,jaxjac.jacobian (streamed),\
jaxjac.jacobian (streamed via device memory),\
torch best (on device),jaxjac vmap-jacrev (on device),jaxjac forward,jaxjac one VJP}"
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
BUDGET="${BUDGET_S:-470}"  # the whole script; each step gets at most what is left of it
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
    step "benchmark: python -m bench --device $DEVICE --models $MODELS (every baseline)"
    # shellcheck disable=SC2086
    SEED_SELECTION=()
    [[ -n "${BENCH_BASELINES:-}" ]] && SEED_SELECTION=(--baselines "$BENCH_BASELINES")
    run "python -m bench --device $DEVICE --models $MODELS" 230 "$PY" -m bench --device "$DEVICE" --models "$MODELS" \
        --timeout 60 --repeats 2 --tag gpu "${SEED_SELECTION[@]}" ${BENCH_ARGS:-}
fi

if [[ "${SKIP_E2E:-0}" != 1 ]]; then
    step "end to end: jaxjac jacobian on $E2E_N x (1, 224) samples from disk, against disk, PCIe and compute bounds"
    run "e2e: write the artifact and X.npy" 60 "$PY" -m bench.io_bound prepare "$E2E_DIR" "$E2E_N"
    JAXJAC="$(dirname "$PY")/jaxjac"
    [[ -x "$JAXJAC" ]] || JAXJAC="$(command -v jaxjac || true)"
    if [[ -n "$JAXJAC" ]]; then
        run "e2e: jaxjac jacobian --target predicted" 100 bash -c '"$1" jacobian "$2/seed-cnn.jaxjac" "$2/X.npy" \
            -o "$2/J.npy" --target predicted --json > "$2/cli.json"' _ "$JAXJAC" "$E2E_DIR"
        run "e2e: bounds (disk copy, PCIe, compute)" 90 "$PY" -m bench.io_bound summarize "$E2E_DIR" \
            "$OUT/gpu-$STAMP-e2e.json"
        # The same command with its results left in device memory and copied out (the default's alternative).
        rm -f "$E2E_DIR/J.npy"
        run "e2e: jaxjac jacobian --target predicted, device output" 100 env JAXJAC_OUTPUT_MEMORY=device \
            bash -c '"$1" jacobian "$2/seed-cnn.jaxjac" "$2/X.npy" -o "$2/J.npy" --target predicted --json > "$3"' \
            _ "$JAXJAC" "$E2E_DIR" "$OUT/gpu-$STAMP-e2e-device-output-cli.json"
    else
        record "FAIL     e2e: no jaxjac command next to $PY or on PATH"; FAILED+=("e2e")
    fi
    rm -rf "$E2E_DIR"
fi

if [[ "${SKIP_TESTS:-0}" != 1 ]]; then
    # jaxjac asks for float32 explicitly, so the agreement tests must pass whatever the global TF32 setting.
    # The two runs share the GPU at once (nothing in them is timed), each on a few xdist workers.
    step "converter agreement tests, TF32 off and TF32 on (JAX and torch global defaults set to TF32), at once"
    XDIST=()
    # pytest-benchmark (in some images) refuses to run under xdist: switch it off.
    "$PY" -c "import xdist" 2>/dev/null && XDIST=(-n 4 -p no:benchmark)
    TESTS=(tests/test_architectures.py tests/test_jacobian.py tests/test_api_contracts.py tests/test_compiler_options.py)
    # The TF32-off run also leaves each program's results in device memory (the default's alternative).
    run "pytest agreement, TF32 off" "${TEST_LIMIT_S:-200}" env NVIDIA_TF32_OVERRIDE=0 JAX_DEFAULT_MATMUL_PRECISION=highest \
        JAXJAC_OUTPUT_MEMORY=device \
        "$PY" -m pytest -q -p no:cacheprovider "${XDIST[@]}" "${TESTS[@]}" \
        > "$OUT/gpu-$STAMP-tests-tf32-off.log" 2>&1 &
    OFF=$!
    run "pytest agreement, TF32 on" "${TEST_LIMIT_S:-200}" env JAX_DEFAULT_MATMUL_PRECISION=tensorfloat32 \
        TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 "$PY" -m pytest -q -p no:cacheprovider "${XDIST[@]}" "${TESTS[@]}" \
        > "$OUT/gpu-$STAMP-tests-tf32-on.log" 2>&1
    wait "$OFF" || true
    grep -q "^PASS     pytest agreement, TF32 off" "$SUMMARY" || FAILED+=("pytest agreement, TF32 off")  # ran in a subshell
    tail -n 3 "$OUT/gpu-$STAMP-tests-tf32-off.log" "$OUT/gpu-$STAMP-tests-tf32-on.log"
fi

if [[ "${SKIP_BENCH:-0}" != 1 && -n "$WIDE" ]]; then
    step "benchmark: python -m bench --device $DEVICE --models $WIDE (the rows the GPU targets need)"
    run "python -m bench --device $DEVICE --models $WIDE" 120 "$PY" -m bench --device "$DEVICE" --models "$WIDE" \
        --timeout 60 --repeats 2 --tag gpu-wide --baselines "$WIDE_BASELINES" ${BENCH_ARGS:-}
fi

step "done in $((SECONDS - T0)) s; summary:"
cat "$SUMMARY"
ls -l "$OUT" | tail -n 20
if [[ ${#FAILED[@]} -gt 0 ]]; then echo "failed steps: ${FAILED[*]}"; exit 1; fi

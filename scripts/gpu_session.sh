#!/usr/bin/env bash
# One phase of the GPU evidence run, on the lent H100/H200 (device tool), from the repo root.
# The offline SGLang bundle (shared/device/README.md) must have been stashed by the two calls before
# `build`. $OUT is the device tool's output folder (at most 8 files come back: logs are kept few).
#
#   bash scripts/gpu_session.sh build    # setup.sh build, apply.py --no-tests, kernel benchmark
#   bash scripts/gpu_session.sh tests    # apply.py test: the registered sage_attn tests, full log
#   bash scripts/gpu_session.sh verify        # verify.py, SmolLM2: baseline, sage, floor, fa3+fp8_e4m3, drift, HTTP (~7 min)
#   bash scripts/gpu_session.sh verify-speed  # the same run continued (--resume): + check 4 on the Llama-3.1-8B
#                                             # geometry, dummy weights (~7.5 min); run it right after `verify`
#                                             # (same warm machine: it reuses /tmp/verify-work); its report is the full one
#   VERIFY_ARGS="--baseline-backend fa3 --floor-backend flashinfer" bash scripts/gpu_session.sh verify  # other choices
# Set SGLANG_SAGE_GIT_COMMIT=<commit of the sent tree> for every phase: the device copy's .git may be stale.
#   bash scripts/gpu_session.sh e2e      # benchmarks/bench_e2e.py (Llama-3.1-8B geometry, dummy weights)
#   bash scripts/gpu_session.sh profile  # Nsight Compute: sage_attn fwd + pack vs cuDNN SDPA at 32K
#   bash scripts/gpu_session.sh floor    # scripts/agreement_floor.py: top-1 agreement triton/flashinfer/sage
#   bash scripts/gpu_session.sh plugin   # scripts/plugin_gpu_check.py: pristine /tmp/site + the sglang-sage wheel only
#                                        # (SGLang plugin): Engine, launch_server, sglang serve hybrid (~3 min)
# Issues #11/#19/#16 (the bundle must carry FA3: WITH_FA3=1, shared/device/README.md):
#   bash scripts/gpu_session.sh i11      # right after the stash calls: setup.sh build, overlay applied, sm90 JIT
#                                        # modules built, Nsight Compute of the sm90 kernel + its pack kernel
#                                        # beside cuDNN SDPA at 32K (~5 min); then `kernels`
#   bash scripts/gpu_session.sh kernels  # bench_kernels.py alone (cuDNN, FA3 bf16/FP8, sage Triton + sm90), ~4-7 min
#   bash scripts/gpu_session.sh e2e11    # bench_e2e.py sage_attn + fa3, 4K..128K, -> h200/e2e_i11.*, ~5-6 min
#   bash scripts/gpu_session.sh e2e19    # bench_e2e.py fa3+fp8kv + flashinfer, same prompts -> h200/e2e_i19.*, ~5-7 min
#       then, on any machine: python3 benchmarks/bench_e2e.py --render benchmarks/results/h200/e2e_i11.json
#                             benchmarks/results/h200/e2e_i19.json --stem e2e
#   bash scripts/gpu_session.sh e2e_tp   # bench_e2e.py --tp 2 (2 GPUs): sage_attn + flashinfer, 4K/32K -> h200x2/, ~4 min
#   bash scripts/gpu_session.sh tp_test  # registered 2-GPU test test_sage_attn_tp.py, ~4-6 min;
#                                        # SGLANG_SAGE_TP_SIZE=1 for the one-GPU smoke run (~2-3 min)
#   bash scripts/gpu_session.sh sm90     # site part only: sm90 JIT build, kernel test, engine smoke, 32K e2e
#   bash scripts/gpu_session.sh warmfi   # before `verify` on a fresh machine: flashinfer's JIT kernels for SmolLM2
#                                        # compiled outside verify's timed floor stage (~3-5 min)
#   bash scripts/gpu_session.sh sm90ab   # fresh machine, no bundle, one call: dev harness A/B of kernel versions
#                                        # (SM90_VERSIONS, default v3,v5,v6): accuracy, cut invariance, speed
#   bash scripts/gpu_session.sh soak     # benchmarks/soak.py: sage_attn vs flashinfer HTTP servers under load
#                                        #   and faults (~7-9 min; SOAK_ARGS=--quick ~5-6 min); 4 files in $OUT
set -uo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT="${OUT:?set OUT}"
phase="${1:?phase: build|i11|sm90ab|warmfi|tests|verify|verify-speed|e2e|floor|profile|plugin|sm90|kernels|e2e11|e2e19|e2e_tp|tp_test|soak}"
VERIFY_WORK=/tmp/verify-work  # kept between the two verify calls (same warm machine)
# shellcheck disable=SC2206
VERIFY=(python3 verify.py --compare-config fa3+fp8_e4m3 --work-dir "$VERIFY_WORK" --out "$OUT/verify" ${VERIFY_ARGS:-})

env_setup() {
  if [ -d .whl ] && ! PYTHONPATH=/tmp/site python3 -c "import git, unidiff, tomlkit" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
  fi
  export PYTHONPATH=/tmp/site
  # shellcheck disable=SC1091
  source /tmp/sglang_env.sh
  if ! command -v git >/dev/null; then
    export PATH="$PWD/scripts/nogit:$PATH"
    echo "NOTE: no git on this machine: apply.py runs with scripts/nogit/git (exact-context git apply stand-in)"
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
}

case "$phase" in
  build)
    bash .device/setup.sh build >"$OUT/setup.log" 2>&1 || { echo "setup.sh build failed"; tail -40 "$OUT/setup.log"; exit 1; }
    tail -5 "$OUT/setup.log"
    env_setup
    python3 apply.py --sglang-dir /tmp/site --no-tests --json >"$OUT/apply.json" 2>"$OUT/apply.err"
    echo "apply rc=$?"; tail -c 1500 "$OUT/apply.json"; tail -5 "$OUT/apply.err"
    timeout 400 python3 benchmarks/bench_kernels.py --out-root "$OUT" 2>&1 | tee "$OUT/bench_kernels.log" | tail -60
    ;;
  tests)
    env_setup
    python3 apply.py test --sglang-dir /tmp/site --test-log "$OUT/registered_tests.log" --json >"$OUT/apply_test.json"
    echo "apply test rc=$?"
    grep -E "PASSED|FAILED|ERROR|passed|failed|agreement|counters|cosine" "$OUT/registered_tests.log" | tail -60
    ;;
  verify|verify-speed)
    env_setup
    # at most 8 files come back: report.json/.md, 4 PNGs, verify.log, verify_logs.tgz (stage logs + job files)
    if [ "$phase" = verify ]; then
      timeout 590 "${VERIFY[@]}" --time-budget 560 2>&1 | tee "$OUT/verify.log" | grep -v Warning | tail -60
    else
      timeout 590 "${VERIFY[@]}" --speed-model --resume --time-budget 560 2>&1 | tee "$OUT/verify.log" | grep -v Warning | tail -60
    fi
    if [ -d "$OUT/verify/logs" ]; then
      cp "$VERIFY_WORK"/job_*.json "$OUT/verify/logs/" 2>/dev/null
      tar czf "$OUT/verify_logs.tgz" -C "$OUT/verify" logs && rm -rf "$OUT/verify/logs"
    fi
    ls -la "$OUT" "$OUT/verify"
    ;;
  e2e)
    env_setup
    python3 apply.py --sglang-dir /tmp/site --no-tests >/dev/null 2>&1 || true
    timeout 560 python3 benchmarks/bench_e2e.py --out-root "$OUT" 2>&1 | tee "$OUT/bench_e2e.log" | tail -60
    ;;
  i11)
    # No model needed: site + fa3 parts only (stashed by earlier calls into /tmp/devparts), extracted the way
    # setup.sh does it and marked with its key, so a later `setup.sh build` (model parts) keeps /tmp/site.
    t0=$SECONDS
    M=.device/MANIFEST.txt
    key="$(awk '$1 == "site" {print $3}' "$M")$(awk '$1 == "fa3" {print $3}' "$M")"
    if [ "$(cat /tmp/site/.bundle_ok 2>/dev/null)" != "$key" ]; then
      bash .device/setup.sh stash | tail -3
      rm -rf /tmp/site.x && mkdir -p /tmp/site.x
      for kind in site-part fa3-part; do
        # shellcheck disable=SC2046 # part names hold no spaces
        cat $(awk -v k=$kind '$1 == k {print "/tmp/devparts/" $2}' "$M") | xz -dc | tar -x -C /tmp/site.x \
          || { echo "extracting $kind failed (parts missing? ls /tmp/devparts: $(ls /tmp/devparts | tr '\n' ' '))"; exit 1; }
      done
      rm -rf /tmp/site && mv /tmp/site.x /tmp/site && echo "$key" >/tmp/site/.bundle_ok
      PYTHONPATH=/tmp/site python3 .device/smoke.py --env-only >/tmp/env_only.log 2>&1 || tail -5 /tmp/env_only.log
    fi
    echo "set up after $((SECONDS - t0)) s"
    env_setup
    python3 apply.py --sglang-dir /tmp/site --no-tests --json >"$OUT/apply.json" 2>/tmp/apply.err; echo "apply rc=$?"
    tail -3 /tmp/apply.err
    # apply's rebuild step built the sm90 JIT modules (sglang_sage/jit_prebuild.py): its line says how
    grep -o '"JIT kernels[^"]*"' "$OUT/apply.json" || echo "JIT kernels not built by apply (see its warnings)"
    echo "jit built after $((SECONDS - t0)) s"
    # shellcheck disable=SC2086 # KERNEL_ARGS is a list of flags
    timeout $((450 - (SECONDS - t0))) python3 benchmarks/bench_kernels.py --out-root "$OUT" \
      --budget-s $((400 - (SECONDS - t0))) ${KERNEL_ARGS:---lengths 4096,16384,32768 --backends sage,sage_sm90,cudnn,fa3,fa3_fp8,flash} \
      >"$OUT/bench_kernels.log" 2>&1; echo "bench_kernels rc=$?"
    grep -E "^\| llama|^\| smollm|budget|Error" "$OUT/bench_kernels.log" | cut -c1-240 | tail -40
    echo "kernels done after $((SECONDS - t0)) s"
    NCU=/usr/local/cuda/bin/ncu
    $NCU --version | tail -1
    [ $((SECONDS - t0)) -lt 470 ] || { echo "no time left for ncu"; exit 0; }
    timeout 60 $NCU --set full -k regex:sage_attn_sm90_kernel --launch-skip 2 --launch-count 1 \
      python3 scripts/profile_sage_kernel.py sage_sm90 >"$OUT/ncu_sage_sm90.txt" 2>&1; echo "ncu sm90 rc=$?"
    timeout 30 $NCU --section SpeedOfLight -k regex:sage_pack_kernel --launch-skip 2 --launch-count 1 \
      python3 scripts/profile_sage_kernel.py sage_sm90 >"$OUT/ncu_sage_sm90_pack.txt" 2>&1; echo "ncu pack rc=$?"
    timeout 60 $NCU --set full -k regex:'fmha|sdpa|cudnn|flash' --launch-skip 2 --launch-count 1 \
      python3 scripts/profile_sage_kernel.py cudnn >"$OUT/ncu_cudnn_sdpa.txt" 2>&1; echo "ncu cudnn rc=$?"
    grep -E "^  [a-zA-Z_].*\(|Duration|Compute \(SM\) Throughput|Registers Per|Issue Slots Busy|Executed Ipc A|Theoretical Occupancy" \
      "$OUT"/ncu_*.txt | cut -c1-200 | head -40
    echo "i11 done after $((SECONDS - t0)) s"
    ;;
  kernels)
    env_setup
    # shellcheck disable=SC2086 # KERNEL_ARGS is a list of flags
    timeout 560 python3 benchmarks/bench_kernels.py --out-root "$OUT" --budget-s 480 ${KERNEL_ARGS:-} 2>&1 \
      | tee "$OUT/bench_kernels.log" | tail -60
    ;;
  e2e11|e2e19|e2e_tp)
    env_setup
    python3 apply.py --sglang-dir /tmp/site --no-tests >/dev/null 2>&1 || echo "apply.py failed: sage engines will be skipped with the reason"
    case "$phase" in
      # E2E_LENGTHS: 4096,32768,131072 fits fa3 + fa3 FP8 KV beside sage_attn in one call
      e2e11) e2e_args=(--backends "${E2E_BACKENDS:-sage_attn,fa3}" --stem e2e_i11) ;;
      e2e19) e2e_args=(--backends fa3+fp8kv,flashinfer --stem e2e_i19) ;;
      e2e_tp) e2e_args=(--tp 2 --stem e2e) ;;
    esac
    # bench_e2e.py stops starting work at 480 s and its watchdog saves and exits at 540 s
    [ -n "${E2E_LENGTHS:-}" ] && e2e_args+=(--lengths "$E2E_LENGTHS")
    timeout 570 python3 benchmarks/bench_e2e.py --out-root "$OUT" "${e2e_args[@]}" 2>&1 \
      | tee "$OUT/bench_${phase}.log" | grep -v -E "Capturing batches|it/s\]|s/it\]" | tail -60
    ;;
  tp_test)
    env_setup
    python3 apply.py --sglang-dir /tmp/site --no-tests >/dev/null 2>&1 || echo "apply.py failed"
    export SGLANG_SAGE_TP_SIZE="${SGLANG_SAGE_TP_SIZE:-2}"
    nvidia-smi -L
    timeout 570 python3 -m pytest -v -s -rA overlay/test/registered/attention/test_sage_attn_tp.py \
      >"$OUT/tp_test.log" 2>&1; echo "pytest rc=$?"
    grep -E "PASSED|FAILED|ERROR|passed|failed|identical|counters|first differing|cached" "$OUT/tp_test.log" | tail -40
    ;;
  floor)
    env_setup
    timeout 560 python3 scripts/agreement_floor.py /tmp/smollm2 --out "$OUT/agreement_floor.json" 2>&1 | tee "$OUT/agreement_floor.log" | grep -v Warning | tail -20
    ;;
  profile)
    env_setup
    python3 apply.py --sglang-dir /tmp/site --no-tests >/dev/null 2>&1 || true
    NCU=/usr/local/cuda/bin/ncu
    $NCU --version | tail -1
    timeout 200 $NCU --set full -k regex:_sage_attn_fwd --launch-skip 2 --launch-count 1 \
      python3 scripts/profile_sage_kernel.py sage >"$OUT/ncu_sage_attn_fwd.txt" 2>&1; echo "ncu sage rc=$?"
    timeout 100 $NCU --section SpeedOfLight -k regex:_pack_kv --launch-skip 2 --launch-count 1 \
      python3 scripts/profile_sage_kernel.py sage >"$OUT/ncu_sage_pack_kv.txt" 2>&1; echo "ncu pack rc=$?"
    timeout 200 $NCU --set full -k regex:'fmha|sdpa|cudnn|flash' --launch-skip 2 --launch-count 1 \
      python3 scripts/profile_sage_kernel.py cudnn >"$OUT/ncu_cudnn_sdpa.txt" 2>&1; echo "ncu cudnn rc=$?"
    grep -E "^  [a-zA-Z_].*\(|Duration|Compute \(SM\) Throughput|Memory Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Issue Slots Busy|Executed Ipc A|Block Limit Reg|Stall" "$OUT"/ncu_*.txt | head -80
    ;;
  plugin)
    # Reverts /tmp/site to pristine when an earlier phase applied it; writes plugin_evidence.json + plugin_logs.tgz
    env_setup
    timeout 560 python3 scripts/plugin_gpu_check.py --out "$OUT" --budget-s 520 2>&1 | tee "$OUT/plugin.log" | grep -v Warning | tail -40
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('verdict:', d['verdict']); [print(k, v.get('ok'), v.get('criteria', v.get('error', ''))) for k, v in d['steps'].items()]" "$OUT/plugin_evidence.json"
    ;;
  sm90)
    # One call on a fresh machine, no model: site part only (+ .whl), overlay applied, the sm90 JIT
    # modules built in parallel, the kernel benchmark of the dev harness, the registered kernel test
    # (sm90 kernel), the engine smoke (dummy weights) and, time permitting, a 32K e2e prefill of
    # sage_attn vs flashinfer (Llama-3.1-8B geometry). Logs go to $W; at most 8 files come back, so
    # the results are copied to $OUT and everything else is packed into one archive at the end.
    t0=$SECONDS
    W=/tmp/sm90run; mkdir -p "$W"
    finish() { tar czf "$OUT/sm90_logs.tgz" -C "$W" . 2>/dev/null
      for f in engine_smoke.json kernels_test.log dev/sm90_dev.json e2e/e2e_sm90.json e2e/e2e_sm90.md apply.json; do
        [ -f "$W/$f" ] && cp "$W/$f" "$OUT/$(echo "$f" | tr / _)"; done; }
    trap finish EXIT
    mkdir -p /tmp/site && cat .device/site.part* | xz -dc | tar -x -C /tmp/site || { echo "site extract failed"; exit 1; }
    PYTHONPATH=/tmp/site python3 .device/smoke.py --env-only >"$W/env_only.log" 2>&1 || { echo "env-only failed"; tail -20 "$W/env_only.log"; }
    echo "site ready after $((SECONDS - t0)) s"
    env_setup
    python3 apply.py --sglang-dir /tmp/site --no-tests --json >"$W/apply.json" 2>"$W/apply.err"; echo "apply rc=$?"
    tail -c 400 "$W/apply.json"; tail -3 "$W/apply.err"
    # apply's rebuild step built the sm90 JIT modules (sglang_sage/jit_prebuild.py): its line says how
    grep -o '"JIT kernels[^"]*"' "$W/apply.json" || echo "JIT kernels not built by apply (see its warnings)"
    echo "jit built after $((SECONDS - t0)) s"
    # SM90_VERSIONS=v3,v5 SM90_PARTS=attn,cut,bench: a harness candidate's accuracy, cut invariance and speed
    # beside the shipped kernel (scripts/sage_sm90_dev/dev.py KERNEL_DIRS)
    timeout "${SM90_DEV_TIMEOUT:-90}" python3 scripts/sage_sm90_dev/dev.py all --versions "${SM90_VERSIONS:-v3}" \
      --parts "${SM90_PARTS:-bench}" --out "$W/dev" >"$W/dev_bench.log" 2>&1
    echo "dev bench rc=$?"; grep -E "^L[0-9]" "$W/dev_bench.log" | cut -c1-260
    SGLANG_SAGE_TEST_KERNELS=sm90 timeout 240 python3 -m pytest -q -s -p no:cacheprovider \
      overlay/test/registered/attention/test_sage_attn_kernels.py >"$W/kernels_test.log" 2>&1; echo "kernel test rc=$?"
    grep -E "passed|failed|Error|accuracy target|FAIL" "$W/kernels_test.log" | tail -12
    echo "kernel tests done after $((SECONDS - t0)) s"
    timeout 230 python3 scripts/sm90_engine_smoke.py --out "$W/engine_smoke.json" >"$W/engine_smoke.log" 2>&1; echo "engine smoke rc=$?"
    grep -E "^smollm2|^llama|ENGINE SMOKE|Error" "$W/engine_smoke.log" | cut -c1-700 | tail -8
    echo "engine smoke done after $((SECONDS - t0)) s"
    left=$((560 - (SECONDS - t0)))
    if [ "$left" -gt 150 ]; then
      timeout $((left - 10)) python3 benchmarks/bench_e2e.py --backends sage_attn,flashinfer --lengths 32768 --repeats 2 \
        --decode-tokens 32 --decode-repeats 1 --budget-s $((left - 40)) --hard-limit-s $((left - 20)) --out-dir "$W/e2e" \
        --stem e2e_sm90 >"$W/e2e.log" 2>&1; echo "e2e rc=$?"; tail -15 "$W/e2e.log"
    else
      echo "no time left for e2e ($left s)"
    fi
    ;;
  warmfi)
    # after `setup.sh build` (model converted), before `verify`: flashinfer's JIT kernels for SmolLM2 compiled
    # outside any timed stage (the floor stage timed out at 150 s twice while compiling them)
    env_setup
    timeout 560 python3 scripts/warm_flashinfer.py /tmp/smollm2 2>&1 | tee "$OUT/warm_flashinfer.log" | grep -v Warning | tail -8
    ;;
  sm90ab)
    # Kernel candidates side by side on a fresh machine, no bundle: the dev harness needs only torch, triton
    # and nvcc from the GPU image. Accuracy vs fp64, bitwise cut invariance and speed per version.
    export PATH="/usr/local/cuda/bin:$PATH"
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nvcc --version | tail -1
    timeout 570 python3 scripts/sage_sm90_dev/dev.py all --versions "${SM90_VERSIONS:-v3,v5,v6}" \
      --parts "${SM90_PARTS:-attn,cut,bench}" --out /tmp/sm90ab >"$OUT/dev_ab.log" 2>&1; echo "dev rc=$?"
    cp /tmp/sm90ab/sm90_dev.json /tmp/sm90ab/nvcc_*.log "$OUT/" 2>/dev/null
    grep -E "^L[0-9]|rc=|registers|spill|TIMEOUT|FAIL|mismatch" "$OUT/dev_ab.log" | cut -c1-240 | tail -60
    ;;
  soak)
    env_setup
    python3 apply.py --sglang-dir /tmp/site --no-tests >/dev/null 2>&1 || true
    # shellcheck disable=SC2086 # SOAK_ARGS is a list of flags
    timeout 585 python3 benchmarks/soak.py --out-root "$OUT" ${SOAK_ARGS:-} 2>&1 | tee "$OUT/soak.log" \
      | grep -v -i warning | tail -70
    ls -la "$OUT"/*/ 2>/dev/null
    ;;
  *) echo "unknown phase $phase"; exit 2 ;;
esac

#!/usr/bin/env bash
# `make test`: the whole suite, with both Caffe builds. setup_env.sh has built the variant this
# machine uses; the other (the CUDA one on a machine without a GPU) is built here, in the
# background at the lowest CPU priority while the suite runs, so a cold cache costs the suite's
# idle CPU instead of a whole build up front. tests/test_caffe_gpu.py, which needs both, runs
# last (tests/conftest.py: RUN_LAST) and waits for it (DLBHC_VARIANT_BUILD_STATUS).
#   bash scripts/run_tests.sh [pytest arguments]
# Environment: DLBHC_NO_VARIANT_BUILD=1 skips the second build (its tests then say why).
set -uo pipefail
cd "$(dirname "$0")/.."

builder=
if [ "${DLBHC_NO_VARIANT_BUILD:-0}" != 1 ]; then
  export DLBHC_VARIANT_BUILD_STATUS=$PWD/.venv/variant-build.status
  export DLBHC_VARIANT_BUILD_LOG=$PWD/.venv/variant-build.log
  rm -f "$DLBHC_VARIANT_BUILD_STATUS"
  # its own session: a Ctrl-C reaches the suite, and the trap below stops the whole build
  # (build_caffe.sh removes its temporary tree when stopped).
  setsid bash -c '
    rc=0
    for variant in --cpu --cuda; do  # the one setup built answers "cached" at once
      nice -n 19 bash scripts/build_caffe.sh "$variant" --no-link .venv || { rc=$?; break; }
    done
    echo "$rc" > "$DLBHC_VARIANT_BUILD_STATUS.tmp"
    mv "$DLBHC_VARIANT_BUILD_STATUS.tmp" "$DLBHC_VARIANT_BUILD_STATUS"' \
    > "$DLBHC_VARIANT_BUILD_LOG" 2>&1 < /dev/null &
  builder=$!
  # One BLAS/OpenMP thread an engine while the build shares the cores: two threads of a Caffe
  # or torch run spin-waiting for each other behind a compiler run slow training tests tenfold
  # (measured: 20 iterations of the small net, 6 s alone, 112 s beside the build).
  export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  trap 'kill -TERM -- -$builder 2>/dev/null' EXIT
  echo "[test] building the other Caffe variant in the background, niced (log: $DLBHC_VARIANT_BUILD_LOG)"
fi

.venv/bin/python -m pytest "$@"
rc=$?
if [ -n "$builder" ] && kill -0 "$builder" 2>/dev/null; then
  echo "[test] the suite ended before the background Caffe build (its tests did not run); stopping it" >&2
fi
exit $rc

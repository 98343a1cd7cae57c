#!/usr/bin/env bash
# The GPU check of the CUDA Caffe build, for a machine with an NVIDIA GPU (sized for an H200 with
# driver 580, nvcc 13.0, Python 3.12 with its own torch and numpy 2.x, no Debian packages, no
# network, under 8 minutes, at most 64 MiB brought along).
#
#   bash scripts/gpu_check.sh --prepare   here (a build machine): .gpu_check/bundle.tar.xz
#                                         (DLBHC_GPU_CHECK_BUNDLE: another path)
#   bash scripts/gpu_check.sh             there, from the repository root: runs and reports
#   bash scripts/gpu_check.sh --dry-run   here, without a GPU: the same steps in CPU mode, small
#
# What travels (.gpu_check/, git-ignored, carried): the CUDA build's `caffe` tool and
# gpu_check_probe (scripts/gpu_check_probe.cpp, compiled here against its libcaffe) with every
# shared library they load except glibc's and CUDA's (libcaffe, glog, protobuf, boost, hdf5,
# leveldb, lmdb, OpenBLAS, libpython3.x for the Python-layer support, ...): xz-compressed, well
# under 64 MiB. The GPU machine's own CUDA 13 runtime, cuBLAS and cuRAND are used (its toolkit or
# its torch's nvidia-* wheels; DLBHC_CUDA_LIBS names other folders); cuBLAS alone is ~0.5 GB. The
# nets (generated here by dlbhc_caffe.netgen) and the wheels the project's torch backend needs
# there (protobuf, lmdb, Pillow, tqdm, as pinned: what the backend imports beyond torch and numpy)
# for Python 3.12 travel too. Pycaffe does not: it is built for
# this machine's Python.
#
# What it reports (stdout, and report.txt in the work folder, DLBHC_GPU_CHECK_WORK, default
# /tmp/dlbhc-gpu-check):
#   - the GPU, driver, `caffe device_query -gpu 0`;
#   - KevinNet (batch 8, 227) forward + backward with Caffe's seeded fillers, GPU against CPU: the
#     largest difference relative to each blob's magnitude, per blob and the worst;
#   - `caffe time` of KevinNet (batch 32, 227): forward-backward ms;
#   - `caffe train` of KevinNet from an LMDB of CIFAR-10-sized records as tools/prepare.py writes
#     them (3 x 256 x 256, random 227 crops, mirror), batch 32: images/s over the iterations after
#     the first display interval;
#   - the same solver on the project's torch backend, TF32 off and on: images/s;
#   - the paper's 50,000-iteration schedule (batch 32) projected from each rate.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

say() { echo "[gpu-check] $*" >&2; }
die() { echo "[gpu-check] ERROR: $*" >&2; exit 1; }

MODE=run
case ${1:-} in
  --prepare) MODE=prepare ;;
  --dry-run) MODE=dry ;;
  "") ;;
  *) echo "[gpu-check] ERROR: usage: bash scripts/gpu_check.sh [--prepare | --dry-run]" >&2; exit 2 ;;
esac
BUNDLE=${DLBHC_GPU_CHECK_BUNDLE:-$REPO/.gpu_check/bundle.tar.xz}
WORK=${DLBHC_GPU_CHECK_WORK:-/tmp/dlbhc-gpu-check}
GLIBC_LIBS='^(libc|libm|libdl|librt|libpthread|libresolv|libutil|ld-linux-x86-64)\.so'
CUDA_LIBS='^(libcudart|libcublas|libcublasLt|libcurand|libcuda)\.so'

# ------------------------------------------------------------------ here: the bundle
cuda_home() {
  local marker=$REPO/.venv/caffe_home.cuda
  [ -f "$marker" ] || die "no CUDA Caffe build recorded in $marker: bash scripts/build_caffe.sh --cuda --no-link .venv"
  cat "$marker"
}

# make_nets DIR BATCH COMPARE_BATCH ITERS DISPLAY: the nets and solver, paths relative to DIR.
make_nets() {
  "$REPO/.venv/bin/python" - "$@" <<'EOF'
import sys
from pathlib import Path
from dlbhc_caffe import proto
from dlbhc_caffe.netgen import caffenet, kevinnet
from dlbhc_caffe.netgen import layers as L
from dlbhc_caffe.proto import pb

out, batch, compare_batch, iters, display = Path(sys.argv[1]), *map(int, sys.argv[2:])
def on_inputs(n, name):
    inputs = [L.input((n, 3, 227, 227)), L.input((n,), name="label_input", top="label")]
    net = kevinnet.hashify(name, inputs, caffenet.caffenet_layers(), 48, 10)
    net.force_backward = True
    keep = [layer for layer in net.layer if layer.type != "Accuracy"]  # it has no backward
    del net.layer[:]
    net.layer.extend(keep)
    return net
proto.write_text(on_inputs(compare_batch, "KevinNet_compare"), out / "compare.prototxt")
proto.write_text(on_inputs(batch, "KevinNet_time"), out / "time.prototxt")
train = kevinnet.train_val_net(48, 10, "lmdb", "lmdb", mean_file=None,
                               mean_value=[104, 117, 123], backend="lmdb", batch_size=batch,
                               test_batch_size=batch)
proto.write_text(train, out / "train.prototxt")
solver = pb.SolverParameter(net="train.prototxt", base_lr=0.001, momentum=0.9, weight_decay=0.0005,
                            lr_policy="step", gamma=0.1, stepsize=25000, max_iter=iters,
                            display=display, random_seed=1, snapshot_after_train=False,
                            solver_mode=pb.SolverParameter.GPU)
proto.write_text(solver, out / "solver.prototxt")
EOF
}

# stage DIR BATCH COMPARE_BATCH ITERS DISPLAY: tools, libraries and nets into DIR.
stage() {
  local dir=$1 home cuda lib name
  home=$(cuda_home)
  cuda=$(dirname "$home")/cuda-13.0.1/nvidia/cu13
  mkdir -p "$dir/bin" "$dir/lib" "$dir/nets"
  say "compiling gpu_check_probe against $home"
  local multiarch
  multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
  if ! g++ -O2 -std=c++17 -DUSE_LMDB -DUSE_LEVELDB "$REPO/scripts/gpu_check_probe.cpp" \
      -o "$dir/bin/gpu_check_probe" -isystem "$home/.build_release/src" -isystem "$home/include" \
      -isystem "$cuda/include" -isystem /usr/include/hdf5/serial \
      -isystem "/usr/include/$multiarch/openblas-pthread" \
      -L"$home/build/lib" -L"$home/cuda-links" -lcaffe -lcudart -lglog -lgflags -lprotobuf \
      -lboost_system -Wl,-rpath,"$home/build/lib" -Wl,-rpath,"$cuda/lib" > "$dir/probe.log" 2>&1; then
    grep -E 'error|Error' "$dir/probe.log" | head -n 20 >&2
    die "gpu_check_probe did not compile (log: $dir/probe.log)"
  fi
  cp -L "$home/build/tools/caffe" "$dir/bin/caffe"
  cp -L "$home"/build/lib/libcaffe.so.* "$dir/lib/"  # found by the tool's $ORIGIN/../lib rpath
  # Every library the two load, by the name they ask for, except glibc's and CUDA's.
  for lib in $( (ldd "$dir/bin/caffe"; ldd "$dir/bin/gpu_check_probe") | awk '/=> \//{print $1 "=" $3}' | sort -u); do
    name=${lib%%=*}
    [[ $name =~ $GLIBC_LIBS || $name =~ $CUDA_LIBS ]] && continue
    [ -e "$dir/lib/$name" ] || cp -L "${lib#*=}" "$dir/lib/$name"
  done
  strip --strip-unneeded "$dir/lib/"*.so* "$dir/bin/"* 2>/dev/null || true
  make_nets "$dir/nets" "${@:2}"
}

prepare() {
  local st
  st=$(mktemp -d)
  STAGED=$st  # global: the EXIT trap runs after this function's locals are gone
  trap 'rm -rf "$STAGED"' EXIT
  stage "$st" 32 8 300 50
  say "wheels for the GPU machine's Python 3.12 (protobuf, lmdb, Pillow, tqdm as pinned)"
  mkdir -p "$st/wheels"
  "$REPO/.venv/bin/python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_28_x86_64 -d "$st/wheels" \
    $(grep -E '^(protobuf|lmdb|Pillow|tqdm)==' "$REPO/requirements.txt")
  mkdir -p "$(dirname "$BUNDLE")"
  tar -cf - -C "$st" . | xz -T2 -6 > "$BUNDLE.tmp"
  mv -f "$BUNDLE.tmp" "$BUNDLE"
  local bytes
  bytes=$(stat -c %s "$BUNDLE")
  [ "$bytes" -lt $((60 * 1024 * 1024)) ] || die "$BUNDLE is $bytes bytes: over the 60 MiB it may take"
  say "bundle: $BUNDLE ($((bytes / 1024 / 1024)) MiB; $(du -sh "$st" | cut -f1) unpacked)"
  say "run there: bash scripts/gpu_check.sh   (carry .gpu_check)"
}

# ------------------------------------------------------------------ there: the measurements
# The folders holding the CUDA 13 runtime, cuBLAS and cuRAND on this machine.
find_cuda_libs() {
  local dirs=() d lib found site
  for d in ${DLBHC_CUDA_LIBS//:/ } "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64; do
    [ -d "$d" ] && dirs+=("$d")
  done
  for site in $("$PY" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
    for d in "$site"/nvidia/*/lib; do [ -d "$d" ] && dirs+=("$d"); done
  done
  local path=
  for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
    found=
    for d in "${dirs[@]}"; do
      if [ -e "$d/$lib" ]; then found=$d; break; fi
    done
    [ -n "$found" ] || die "$lib not found (looked in: ${dirs[*]}); set DLBHC_CUDA_LIBS"
    case ":$path:" in *":$found:"*) ;; *) path=${path:+$path:}$found ;; esac
  done
  echo "$path"
}

report() { echo "$*" | tee -a "$WORK/report.txt"; }

# Runs a carried tool with the carried libraries (only the tools: the bundle's older libstdc++
# must not reach this machine's Python and torch).
tool() { LD_LIBRARY_PATH=$TOOL_LIBS "$WORK/bin/$1" "${@:2}"; }

# glog's timestamps (hh:mm:ss.micro, after mmdd or yyyymmdd) of two "Iteration N" lines ->
# images/s between them.
caffe_rate() {
  "$PY" - "$@" <<'EOF'
import re, sys
log, first, last, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
stamps = {}
for line in open(log, errors="replace"):
    m = re.match(r"I(?:\d{4})?\d{4} (\d\d):(\d\d):(\d\d\.\d+).*\] Iteration (\d+)", line)
    if m:
        stamps.setdefault(int(m.group(4)), 3600 * int(m.group(1)) + 60 * int(m.group(2)) + float(m.group(3)))
if first not in stamps or last not in stamps:
    sys.exit("no Iteration %d / %d lines in %s" % (first, last, log))
print("%.1f" % ((last - first) * batch / ((stamps[last] - stamps[first]) % 86400)))
EOF
}

project() {  # images/s -> hours for 50,000 iterations of 32 images
  awk -v r="$1" 'BEGIN { if (r > 0) printf "%.2f h", 50000 * 32 / r / 3600; else print "n/a" }'
}

measure() {  # GPU: device id, or -1 for the CPU (dry run)
  local gpu=$1 batch=$2 iters=$3 display=$4 records=$5 gflag=() rate t
  [ "$gpu" -ge 0 ] && gflag=(-gpu "$gpu")
  : > "$WORK/report.txt"
  report "# dlbhc-caffe GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), $([ "$gpu" -ge 0 ] && echo "GPU $gpu" || echo "CPU dry run")"
  if [ "$gpu" -ge 0 ]; then
    report "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader -i "$gpu")"
    GLOG_minloglevel=0 tool caffe device_query -gpu "$gpu" > "$WORK/device_query.log" 2>&1 ||
      die "caffe device_query failed: $(tail -n 3 "$WORK/device_query.log")"
    report "device_query: $(grep -o 'Name: .*' "$WORK/device_query.log" | sed 's/  */ /g')"
  fi
  tool gpu_check_probe compare nets/compare.prototxt "$gpu" > "$WORK/compare.txt"
  report "forward+backward $([ "$gpu" -ge 0 ] && echo GPU || echo CPU) vs CPU, KevinNet batch $(grep -m1 -o 'dim: [0-9]*' nets/compare.prototxt | cut -d' ' -f2): $(tail -n 1 "$WORK/compare.txt")"
  grep -E '^blob (conv1|fc7|fc8_kevin_encode|loss) data|^blob (conv1|fc8_kevin)\[0\] param diff|^blob data diff' "$WORK/compare.txt" | sed 's/^/  /' | tee -a "$WORK/report.txt"

  GLOG_minloglevel=0 GLOG_logtostderr=1 tool caffe time -model nets/time.prototxt \
    "${gflag[@]}" -iterations "$((iters / 6 + 2))" > "$WORK/time.log" 2>&1 ||
    die "caffe time failed: $(tail -n 3 "$WORK/time.log")"
  t=$(grep -o 'Average Forward-Backward: [0-9.]* ms' "$WORK/time.log" | grep -o '[0-9.]* ms')
  report "caffe time, KevinNet batch $batch 227x227, forward-backward: $t"

  rm -rf lmdb
  tool gpu_check_probe makedb lmdb "$records" 3 256 256 > /dev/null
  GLOG_minloglevel=0 GLOG_logtostderr=1 tool caffe train -solver solver.prototxt \
    "${gflag[@]}" > "$WORK/train.log" 2>&1 || die "caffe train failed: $(tail -n 3 "$WORK/train.log")"
  rate=$(caffe_rate "$WORK/train.log" "$display" "$iters" "$batch")
  report "caffe train, KevinNet from LMDB ($records records 3x256x256, crop 227), batch $batch, iterations $display-$iters: $rate images/s; 50,000 iterations: $(project "$rate")"

  local precision
  for precision in float32 tf32; do
    if rate=$(torch_rate "$gpu" "$precision" "$display" "$iters" "$batch" 2> "$WORK/torch-$precision.log"); then
      report "torch backend ($precision), same solver and LMDB: $rate images/s; 50,000 iterations: $(project "$rate")"
    else
      report "torch backend ($precision): FAILED: $(tail -n 1 "$WORK/torch-$precision.log")"
    fi
    [ "$gpu" -ge 0 ] || break  # TF32 is a GPU setting
  done
}

torch_rate() {
  "$PY" - "$@" <<'EOF'
import sys, time
gpu, precision, warm, iters, batch = int(sys.argv[1]), sys.argv[2], *map(int, sys.argv[3:])
from dlbhc_caffe import backends
engine = backends.get("torch")
if gpu >= 0:
    engine.set_mode_gpu()
    engine.set_device(gpu)
    engine.set_precision(precision)
else:
    engine.set_mode_cpu()
solver = engine.get_solver("solver.prototxt")
solver.step(warm)
if gpu >= 0:
    import torch
    torch.cuda.synchronize()
start = time.perf_counter()
solver.step(iters - warm)
if gpu >= 0:
    torch.cuda.synchronize()
print("%.1f" % ((iters - warm) * batch / (time.perf_counter() - start)))
EOF
}

run_there() {
  [ -f "$BUNDLE" ] || die "no $BUNDLE: run bash scripts/gpu_check.sh --prepare on the build machine and carry .gpu_check"
  command -v nvidia-smi >/dev/null && nvidia-smi -L | grep -q '^GPU ' || die "nvidia-smi lists no GPU here"
  rm -rf "$WORK"
  mkdir -p "$WORK"
  tar -xJf "$BUNDLE" -C "$WORK"
  PY=${DLBHC_GPU_CHECK_PYTHON:-python3}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$WORK"/wheels/*.whl ||
    die "could not install the carried wheels into $WORK/site"
  export PYTHONPATH=$WORK/site:$REPO
  TOOL_LIBS=$WORK/lib:$(find_cuda_libs)
  cd "$WORK"
  cp nets/train.prototxt nets/solver.prototxt .
  measure "${DLBHC_GPU:-0}" 32 300 50 2000
  say "report: $WORK/report.txt"
}

dry_run() {
  PY=$REPO/.venv/bin/python
  rm -rf "$WORK"
  mkdir -p "$WORK"
  stage "$WORK" 2 2 4 2
  sed -i 's/solver_mode: GPU/solver_mode: CPU/' "$WORK/nets/solver.prototxt"
  export PYTHONPATH=$REPO
  # As there: the bundle's libraries first; CUDA's from the build's toolkit (standing in for the
  # GPU machine's own).
  TOOL_LIBS=$WORK/lib:$(DLBHC_CUDA_LIBS=$(dirname "$(cuda_home)")/cuda-13.0.1/nvidia/cu13/lib find_cuda_libs)
  cd "$WORK"
  cp nets/train.prototxt nets/solver.prototxt .
  measure -1 2 4 2 20
  say "report: $WORK/report.txt"
}

case $MODE in
  prepare) prepare ;;
  run) run_there ;;
  dry) dry_run ;;
esac

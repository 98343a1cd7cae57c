#!/usr/bin/env bash
# Builds real BVLC Caffe (CPU only, with pycaffe, LevelDB and LMDB, without OpenCV) from the PyPI
# sdist brocolli-caffe==9.0.2 into a cache outside the clone, and makes `import caffe` work in a
# virtual environment.
#
#   bash scripts/build_caffe.sh VENV        (scripts/setup_env.sh calls it with .venv)
#
# Where it goes:
#   ${DLBHC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dlbhc-caffe}/caffe-brocolli-9.0.2-cpXY-npA.B/
# keyed by the Caffe version, the venv's Python version and its numpy ABI (pycaffe is compiled
# against that numpy's headers). Inside: the patched source, build/lib/libcaffe.so*,
# build/tools/{caffe,upgrade_net_proto_text,upgrade_net_proto_binary,convert_imageset,
# compute_image_mean,...}, python/caffe (with _caffe.so and the regenerated caffe_pb2.py) and
# build.log. The tree is built in a temporary folder beside it and renamed into place only once it
# is built and has passed a smoke test, so an interrupted build never looks finished; a folder
# holding the stamp file .dlbhc-complete is taken as done, and a second run only relinks:
#   VENV/lib/pythonX.Y/site-packages/dlbhc-pycaffe.pth   -> <cache>/python
#   VENV/caffe_home                                      -> <cache> (one line, absolute path)
# The rpaths are relative ($ORIGIN), so LD_LIBRARY_PATH is never needed.
#
# Environment: DLBHC_CACHE (cache root), DLBHC_CAFFE_REBUILD=1 (build again even when cached),
# DLBHC_CAFFE_KEEP_FAILED=1 (keep the temporary tree of a failed build for inspection),
# DLBHC_CAFFE_JOBS (make -j, default nproc).
#
# ---------------------------------------------------------------------------------------------
# A CUDA build (not done here: these machines have no GPU; untested, for whoever needs one)
# ---------------------------------------------------------------------------------------------
# - In Makefile.config: drop CPU_ONLY, set CUDA_DIR (default /usr/local/cuda; its lib64 must be
#   known to the dynamic loader, e.g. through /etc/ld.so.conf.d, because the Makefile puts no rpath
#   to it on Linux), and link cudart, cublas and curand (the Makefile does that itself).
# - CUDA toolkit: one that knows the target GPU and accepts the host compiler. Current GPUs need
#   CUDA 11.0+ for Ampere (sm_80, A100), 11.1+ for sm_86, 11.8+ for Ada (sm_89) and Hopper (sm_90,
#   H100/H200); Debian 12's g++ 12 needs CUDA 12.0 or later as host compiler. CUDA 12 no longer
#   targets Kepler (sm_35/37), and CUDA 9+ dropped Fermi (sm_20/21), so the example CUDA_ARCH
#   list shipped in Makefile.config.example (compute_20 ... compute_61) must be replaced, e.g.
#     CUDA_ARCH := -gencode arch=compute_80,code=sm_80 -gencode arch=compute_86,code=sm_86 \
#                  -gencode arch=compute_89,code=sm_89 -gencode arch=compute_90,code=sm_90 \
#                  -gencode arch=compute_90,code=compute_90
#   (the last line embeds PTX so that newer GPUs can JIT-compile it).
# - cuDNN: Caffe 1.0 was released for cuDNN v5/v6; this source also has the cuDNN v7 code paths
#   (CUDNN_VERSION_MIN(7,0,0) in include/caffe/util/cudnn.hpp). cuDNN 8 removed
#   cudnnGetConvolution{Forward,BackwardData,BackwardFilter}Algorithm and the *_PREFER_FASTEST /
#   *_SPECIFY_WORKSPACE_LIMIT enums that src/caffe/layers/cudnn_conv_layer.cpp calls, so Caffe 1.0's
#   cuDNN code does not compile against cuDNN 8 or 9 (BVLC/caffe issue 6970). The last cuDNN 7
#   (7.6.5) stops at CUDA 10.2, which knows no GPU newer than Turing (sm_75). Hence on current
#   GPUs: USE_CUDNN off (Caffe's own CUDA kernels for convolution, via im2col + cuBLAS).
# - Optional: USE_NCCL := 1 with NCCL installed for Caffe's multi-GPU training (`caffe train -gpu
#   0,1`). The torch backend is the supported path to current GPUs in this project.
# ---------------------------------------------------------------------------------------------
set -euo pipefail

CAFFE_PKG=brocolli-caffe
CAFFE_VERSION=9.0.2
CAFFE_SHA256=c6410cc60bdd6db685d441b66be7df05410f8850ac88d6b75d48ef9b2315c08a
SDIST_NAME=$CAFFE_PKG-$CAFFE_VERSION.tar.gz

say() { echo "[caffe] $*"; }
die() { echo "[caffe] ERROR: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: bash scripts/build_caffe.sh VENV"
[ -x "$1/bin/python" ] || die "no Python at $1/bin/python (create the venv first: scripts/setup_env.sh)"
VENV=$(cd "$1" && pwd)
PY=$VENV/bin/python

# --- the key: Caffe version, Python version, numpy ABI -------------------------------------------
info=$("$PY" - <<'EOF'
import sys, sysconfig
try:
    import numpy
except ImportError:
    sys.exit("[caffe] ERROR: numpy is not installed in this venv (pip install -r requirements.txt)")
paths = sysconfig.get_paths()
print("cp%d%d" % sys.version_info[:2])                # Python tag
print(".".join(numpy.__version__.split(".")[:2]))    # numpy ABI (major.minor)
print(paths["purelib"])                              # site-packages, for the .pth
print(paths["include"])                              # Python.h
print(sysconfig.get_config_var("LIBDIR"))            # libpythonX.Y.so
print("%d.%d" % sys.version_info[:2])
EOF
) || die "could not query $PY"
mapfile -t fields <<< "$info"
[ ${#fields[@]} -eq 6 ] || die "could not query $PY: $info"
PYTAG=${fields[0]} NPVER=${fields[1]} SITE=${fields[2]} PYINC=${fields[3]} PYLIBDIR=${fields[4]}
PYMAJMIN=${fields[5]}
KEY=caffe-brocolli-$CAFFE_VERSION-$PYTAG-np$NPVER
CACHE_ROOT=${DLBHC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dlbhc-caffe}
mkdir -p "$CACHE_ROOT"
CACHE_ROOT=$(cd "$CACHE_ROOT" && pwd)
FINAL=$CACHE_ROOT/$KEY
STAMP=.dlbhc-complete
LOG=$CACHE_ROOT/$KEY.build.log

# Files whose presence (with the stamp) means "built and tested".
REQUIRED=(build/lib/libcaffe.so python/caffe/_caffe.so python/caffe/proto/caffe_pb2.py
  build/tools/caffe build/tools/upgrade_net_proto_text build/tools/upgrade_net_proto_binary
  build/tools/convert_imageset build/tools/compute_image_mean)

is_complete() {
  [ -f "$1/$STAMP" ] || return 1
  local f
  for f in "${REQUIRED[@]}"; do [ -e "$1/$f" ] || return 1; done
}

# Makes the venv use the cached tree: a .pth on sys.path and VENV/caffe_home for the tools.
link_venv() {
  local pth=$SITE/dlbhc-pycaffe.pth
  printf '%s\n' "$FINAL/python" > "$pth.tmp" && mv -f "$pth.tmp" "$pth"
  printf '%s\n' "$FINAL" > "$VENV/caffe_home.tmp" && mv -f "$VENV/caffe_home.tmp" "$VENV/caffe_home"
  say "linked: $pth -> $FINAL/python"
  say "caffe_home: $VENV/caffe_home -> $FINAL (tools in $FINAL/build/tools)"
}

# Imports caffe through the .pth, the way the project will: no PYTHONPATH, no LD_LIBRARY_PATH.
check_import() {
  local out
  if ! out=$(cd / && env -u LD_LIBRARY_PATH -u PYTHONPATH GLOG_minloglevel=2 "$PY" -c '
import caffe, numpy
from caffe.proto import caffe_pb2
print(caffe.__version__, caffe.__file__)' 2>&1); then
    echo "$out" | tail -n 20 >&2
    die "import caffe failed in $VENV (cached tree: $FINAL; rebuild with DLBHC_CAFFE_REBUILD=1)"
  fi
  say "import caffe ok: $out"
}

# One process at a time per cache root (setup_env.sh may run in two clones at once).
if command -v flock >/dev/null; then
  exec 9>"$CACHE_ROOT/.lock"
  flock -n 9 || { say "waiting for another build in $CACHE_ROOT ..."; flock 9; }
fi

if [ "${DLBHC_CAFFE_REBUILD:-0}" != 1 ] && is_complete "$FINAL"; then
  say "cached: $FINAL"
  link_venv
  check_import
  exit 0
fi

# --- prerequisites ---------------------------------------------------------------------------------
MULTIARCH=$(gcc -print-multiarch 2>/dev/null || true)
MULTIARCH=${MULTIARCH:-x86_64-linux-gnu}
BOOST_PY=boost_python${PYMAJMIN/./}
BLAS_INC=/usr/include/$MULTIARCH/openblas-pthread
HDF5_INC=/usr/include/hdf5/serial
HDF5_LIB=/usr/lib/$MULTIARCH/hdf5/serial
missing=()
command -v make >/dev/null || missing+=("make (build-essential)")
command -v g++ >/dev/null || missing+=("g++ (build-essential)")
command -v protoc >/dev/null || missing+=("protoc (protobuf-compiler)")
[ -e "/usr/lib/$MULTIARCH/lib$BOOST_PY.so" ] || missing+=("lib$BOOST_PY.so (libboost-python-dev for Python $PYMAJMIN)")
[ -e "/usr/lib/$MULTIARCH/libboost_regex.so" ] || missing+=("libboost_regex.so (libboost-regex-dev)")
[ -f "$BLAS_INC/cblas.h" ] || missing+=("$BLAS_INC/cblas.h (libopenblas-dev)")
[ -f "$HDF5_INC/hdf5.h" ] || missing+=("$HDF5_INC/hdf5.h (libhdf5-dev)")
[ -f /usr/include/leveldb/db.h ] || missing+=("leveldb/db.h (libleveldb-dev)")
[ -f /usr/include/lmdb.h ] || missing+=("lmdb.h (liblmdb-dev)")
[ -f /usr/include/glog/logging.h ] || missing+=("glog/logging.h (libgoogle-glog-dev)")
[ -f "$PYINC/Python.h" ] || missing+=("$PYINC/Python.h (Python headers)")
[ ${#missing[@]} -eq 0 ] || die "missing build prerequisites: ${missing[*]} (see scripts/setup_env.sh)"
NPINC=$("$PY" -c 'import numpy; print(numpy.get_include())')
[ -f "$NPINC/numpy/arrayobject.h" ] || die "numpy headers not found in $NPINC"

# --- fetch and check the sdist (kept in the cache, so a rebuild for another key needs no network) ---
DIST=$CACHE_ROOT/dist
mkdir -p "$DIST"
sha_of() { sha256sum "$1" | cut -d' ' -f1; }
if [ ! -f "$DIST/$SDIST_NAME" ] || [ "$(sha_of "$DIST/$SDIST_NAME")" != "$CAFFE_SHA256" ]; then
  say "pip download --no-deps --no-binary :all: $CAFFE_PKG==$CAFFE_VERSION"
  dl=$(mktemp -d "$DIST/.dl.XXXXXX")
  if ! "$PY" -m pip download -q --no-deps --no-binary :all: "$CAFFE_PKG==$CAFFE_VERSION" -d "$dl" \
      > "$dl.log" 2>&1; then
    tail -n 20 "$dl.log" >&2
    rm -rf "$dl" "$dl.log"
    die "pip download of $CAFFE_PKG==$CAFFE_VERSION failed"
  fi
  [ -f "$dl/$SDIST_NAME" ] || { ls -l "$dl" >&2; rm -rf "$dl" "$dl.log"; die "pip did not produce $SDIST_NAME"; }
  got=$(sha_of "$dl/$SDIST_NAME")
  if [ "$got" != "$CAFFE_SHA256" ]; then
    rm -rf "$dl" "$dl.log"
    die "sha256 mismatch for $SDIST_NAME: expected $CAFFE_SHA256, got $got"
  fi
  mv -f "$dl/$SDIST_NAME" "$DIST/$SDIST_NAME"
  rm -rf "$dl" "$dl.log"
fi
say "sdist ok: $DIST/$SDIST_NAME (sha256 $CAFFE_SHA256)"

# --- a fresh temporary tree next to the final one (same file system: the rename is atomic) ---------
for stale in "$CACHE_ROOT"/.tmp."$KEY".*; do
  [ -e "$stale" ] && { say "removing a leftover from an interrupted build: $stale"; rm -rf "$stale"; }
done
TMP=$(mktemp -d "$CACHE_ROOT/.tmp.$KEY.XXXXXX")
chmod 755 "$TMP"  # mktemp makes it private; the cache is meant to be readable
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ] && [ -d "$TMP" ]; then
    if [ "${DLBHC_CAFFE_KEEP_FAILED:-0}" = 1 ]; then
      echo "[caffe] failed tree kept: $TMP (removed by the next run)" >&2
    else
      rm -rf "$TMP"
    fi
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
: > "$LOG"
say "build log: $LOG"
tar -xzf "$DIST/$SDIST_NAME" -C "$TMP" --strip-components=1
SRC=$TMP

# --- patches (each one fails when its target text is not there) -----------------------------------
# patch_text FILE COUNT OLD NEW: replaces OLD by NEW; OLD must occur exactly COUNT times.
patch_text() {
  "$PY" - "$@" <<'EOF'
import sys
path, count, old, new = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
with open(path, encoding="utf-8") as f:
    text = f.read()
found = text.count(old)
if found != count:
    sys.exit("[caffe] ERROR: patch target not found as expected in %s: %r occurs %d times, "
             "expected %d" % (path, old, found, count))
with open(path, "w", encoding="utf-8") as f:
    f.write(text.replace(old, new))
EOF
}

say "patching the source"
# Makefile: the sdist forces BUILD_DIR = temp after reading Makefile.config; drop it so the tree
# uses Caffe's usual build -> .build_release link.
patch_text "$SRC/Makefile" 1 $'\nBUILD_DIR = temp\n' $'\n'
# Makefile: boost_regex must be linked (the SSD extras use it); it already is in this sdist: check.
grep -Eq '^LIBRARIES \+= .*\bboost_regex\b' "$SRC/Makefile" ||
  die "patch target not found: boost_regex is no longer in the Makefile's LIBRARIES"
# Makefile: pycaffe's link also gets an rpath to the venv Python's libpython (a pyenv Python keeps it
# outside the loader's paths), on top of its relative one to build/lib.
# shellcheck disable=SC2016  # $(ORIGIN) is make's, not the shell's
patch_text "$SRC/Makefile" 1 $'\t\t-Wl,-rpath,$(ORIGIN)/../../build/lib\n' \
  $'\t\t-Wl,-rpath,$(ORIGIN)/../../build/lib $(PYTHON_RPATH)\n'

# python/caffe/io.py: numpy >= 1.19 / scikit-image >= 0.19 renamed what it calls, and resize_image()
# uses `resize` without importing it.
IO=$SRC/python/caffe/io.py
patch_text "$IO" 1 'arr.tostring()' 'arr.tobytes()'
# fromstring returned a writable copy; frombuffer returns a read-only view, so copy.
patch_text "$IO" 1 'np.fromstring(datum.data, dtype=np.uint8)' \
  'np.frombuffer(datum.data, dtype=np.uint8).copy()'
patch_text "$IO" 1 'as_grey=' 'as_gray='
patch_text "$IO" 1 $'import skimage.io\n' $'import skimage.io\nfrom skimage.transform import resize\n'
# pycaffe.py and net_spec.py import six only for iteritems/itervalues/next; give them a Python 3
# stand-in instead of adding a dependency.
SIX_SHIM='import types as _types
six = _types.SimpleNamespace(iteritems=lambda d: iter(d.items()),
                             itervalues=lambda d: iter(d.values()), next=next)
'
patch_text "$SRC/python/caffe/pycaffe.py" 1 $'\nimport six\n' $'\n'"$SIX_SHIM"
patch_text "$SRC/python/caffe/net_spec.py" 1 $'\nimport six\n' $'\n'"$SIX_SHIM"
# The shipped caffe_pb2.py was made by another protoc: let this protoc regenerate it (it must match
# the installed protobuf runtime). Also drop the sdist's stale bytecode and its egg-info, which would
# otherwise make pip believe brocolli-caffe is installed in the venv.
[ -f "$SRC/python/caffe/proto/caffe_pb2.py" ] || die "patch target not found: python/caffe/proto/caffe_pb2.py"
rm -f "$SRC/python/caffe/proto/caffe_pb2.py"
rm -rf "$SRC/python/caffe/__pycache__" "$SRC"/python/*.egg-info

# Makefile.config: written whole, not patched.
cat > "$SRC/Makefile.config" <<EOF
# Written by dlbhc-caffe's scripts/build_caffe.sh for $KEY.
CPU_ONLY := 1
USE_OPENCV := 0
USE_LEVELDB := 1
USE_LMDB := 1
BLAS := open
BLAS_INCLUDE := $BLAS_INC
BLAS_LIB := /usr/lib/$MULTIARCH
PYTHON_INCLUDE := $PYINC $NPINC
PYTHON_LIB := $PYLIBDIR
PYTHON_LIBRARIES := $BOOST_PY python$PYMAJMIN
PYTHON_RPATH := -Wl,-rpath,$PYLIBDIR
INCLUDE_DIRS := \$(PYTHON_INCLUDE) /usr/local/include $HDF5_INC
LIBRARY_DIRS := \$(PYTHON_LIB) /usr/local/lib /usr/lib /usr/lib/$MULTIARCH $HDF5_LIB
BUILD_DIR := build
DISTRIBUTE_DIR := distribute
TEST_GPUID := 0
Q ?= @
EOF

# --- build -----------------------------------------------------------------------------------------
JOBS=${DLBHC_CAFFE_JOBS:-$(nproc)}
say "make -j$JOBS all pycaffe in $TMP (about 4-5 minutes on 2 cores)"
t0=$(date +%s)
set +e
# The make output goes whole to the log; the terminal gets a line every 25 compiled files and one
# per link (a shell loop, not awk: mawk buffers its input and would print them late).
progress() {
  local line n=0
  while IFS= read -r line; do
    case $line in
      "CXX "*) n=$((n + 1))
        [ $((n % 25)) -ne 0 ] || say "  $n files compiled ($(( $(date +%s) - t0 ))s)" ;;
      "LD "* | "CXX/LD "*) say "  $line" ;;
    esac
  done
}
(cd "$SRC" && make -j"$JOBS" all pycaffe) 2>&1 | tee -a "$LOG" | progress
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
  echo "[caffe] make failed (exit $rc); last lines of $LOG:" >&2
  tail -n 40 "$LOG" >&2
  die "build failed; full log: $LOG"
fi
build_s=$(( $(date +%s) - t0 ))
say "built in ${build_s}s"

for f in "${REQUIRED[@]}"; do
  [ -e "$SRC/$f" ] || die "build finished but $f is missing (log: $LOG)"
done
# Object and dependency files are not needed once linked (the cache is never rebuilt in place).
find "$SRC/.build_release" \( -name '*.o' -o -name '*.d' \) -delete

# --- smoke test in the temporary tree, before it counts as done -----------------------------------
say "smoke test"
if ldd "$SRC/python/caffe/_caffe.so" | grep -q 'not found'; then
  ldd "$SRC/python/caffe/_caffe.so" >&2
  die "_caffe.so has unresolved libraries without LD_LIBRARY_PATH"
fi
cat > "$SRC/.smoke_v1.prototxt" <<'EOF'
name: "smoke"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
EOF
if ! (cd / && env -u LD_LIBRARY_PATH GLOG_minloglevel=2 \
    "$SRC/build/tools/upgrade_net_proto_text" "$SRC/.smoke_v1.prototxt" "$SRC/.smoke_new.prototxt" \
    && grep -q 'type: "Convolution"' "$SRC/.smoke_new.prototxt") >> "$LOG" 2>&1; then
  tail -n 20 "$LOG" >&2
  die "upgrade_net_proto_text does not run (log: $LOG)"
fi
if ! (cd / && env -u LD_LIBRARY_PATH PYTHONPATH="$SRC/python" GLOG_minloglevel=2 "$PY" -c '
import sys, caffe
from caffe.proto import caffe_pb2
net = caffe.Net(sys.argv[1], caffe.TEST)
assert net.blobs["conv"].data.shape == (2, 4, 6, 6), net.blobs["conv"].data.shape
net.forward()
' "$SRC/.smoke_new.prototxt") >> "$LOG" 2>&1; then
  tail -n 20 "$LOG" >&2
  die "pycaffe does not import or run (log: $LOG)"
fi
rm -f "$SRC/.smoke_v1.prototxt" "$SRC/.smoke_new.prototxt"
rm -rf "$SRC/python/caffe/__pycache__" "$SRC/python/caffe/proto/__pycache__"

# --- into place --------------------------------------------------------------------------------------
cp "$LOG" "$SRC/build.log"
cat > "$SRC/$STAMP" <<EOF
key=$KEY
sdist=$SDIST_NAME sha256=$CAFFE_SHA256
python=$PY ($PYTAG) numpy=$("$PY" -c 'import numpy; print(numpy.__version__)') protoc=$(protoc --version)
built=$(date -u +%Y-%m-%dT%H:%M:%SZ) seconds=$build_s
EOF
if [ -e "$FINAL" ]; then
  old=$(mktemp -d "$CACHE_ROOT/.tmp.$KEY.old.XXXXXX")
  mv "$FINAL" "$old/"
  mv "$SRC" "$FINAL"
  rm -rf "$old"
else
  mv "$SRC" "$FINAL"
fi
say "installed: $FINAL ($(du -sh "$FINAL" | cut -f1))"
link_venv
check_import

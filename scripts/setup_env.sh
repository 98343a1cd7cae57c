#!/usr/bin/env bash
# Installs everything dlbhc-caffe needs, idempotently (a second run takes seconds):
#   1. Debian packages: compilers, Python headers, and Caffe's libraries (apt-get when root,
#      otherwise the exact command to run is printed);
#   2. .venv with the pinned requirements and this package (editable; builds the Cython module);
#   3. real Caffe with pycaffe, built from source into a cache outside the clone
#      (scripts/build_caffe.sh), made importable from .venv: the CUDA build when `nvidia-smi`
#      lists a GPU, else the CPU-only one (DLBHC_CAFFE_CUDA=1 or 0 chooses).
# Environment: PYTHON (default python3), DLBHC_NO_CAFFE=1 skips step 3, DLBHC_CAFFE_CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

APT_PACKAGES=(build-essential python3-dev python3-venv pkg-config
  libboost-system-dev libboost-thread-dev libboost-filesystem-dev libboost-python-dev
  libboost-regex-dev libprotobuf-dev protobuf-compiler libgoogle-glog-dev libgflags-dev
  libhdf5-dev libleveldb-dev liblmdb-dev libsnappy-dev libopenblas-dev
  chromium chromium-driver)  # the search page's browser tests (tests/test_serve_browser.py)
# Playwright drives Debian's chromium above; it must never fetch a browser of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup] apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "[setup] missing Debian packages; run as root:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.dlbhc-requirements
want=$(cat requirements.txt setup.py pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] pip install -r requirements.txt"
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
  .venv/bin/python -m pip install -q -r requirements.txt
  echo "$want" > "$stamp"
fi
# Always: rebuilds the Cython extension when its sources changed (cythonize skips otherwise).
# setuptools prints an "Editable installation" banner on every editable install: shown only
# when the install fails.
if ! install_log=$(.venv/bin/python -m pip install -q --no-build-isolation --no-deps -e . 2>&1); then
  echo "$install_log" >&2
  echo "[setup] pip install -e . failed" >&2
  exit 1
fi

if [ "${DLBHC_NO_CAFFE:-0}" != 1 ]; then
  bash scripts/build_caffe.sh .venv
fi
echo "[setup] ready: .venv"

#!/usr/bin/env bash
# Create a separate virtual environment holding learn2learn 0.2.0, for
# benchmarks/bench_maml_learn2learn.py only. learn2learn is never a dependency of metacl.
#
# Usage: bash benchmarks/setup_learn2learn.sh [VENV_DIR]   (default /tmp/l2l-venv)
# Then:  python benchmarks/bench_maml_learn2learn.py --l2l-python VENV_DIR/bin/python
#
# Why the detour:
# - learn2learn 0.2.0 (the last release) ships only as an sdist whose pre-generated C
#   files include longintrepr.h, which Python 3.11 removed, so `pip install learn2learn`
#   fails to compile. The C files are regenerated here from the .pyx sources with
#   Cython 3 and the package is built without build isolation.
# - It imports torchvision at import time. No torchvision wheel here loads beside
#   metacl's local torch 2.13.0+cpu (0.28.0 from PyPI is built against the CUDA torch
#   and fails with "operator torchvision::nms does not exist"; the CPU wheel index is
#   not reachable), so this venv holds torch 2.14.1 and torchvision 0.29.1, the pair
#   this machine serves from local disk (a ~6 GB venv; it runs on the CPU). The
#   benchmark reports both torch versions.
# - Its declared dependencies are installed by hand, without gsutil (used only to
#   download some of its datasets, not by MAML); qpth pulls numpy<2.
set -euo pipefail

VENV=${1:-/tmp/l2l-venv}
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$PY" -m venv "$VENV"
PIP=("$VENV/bin/pip" --quiet --disable-pip-version-check)
"${PIP[@]}" install --upgrade pip setuptools wheel

# a torch / torchvision pair that loads together (see above)
"${PIP[@]}" install "torch==2.14.1" "torchvision==0.29.1"
"${PIP[@]}" install "cython>=3" "numpy<2" pillow gym scipy requests tqdm "qpth>=0.0.15"

# fetch the source distribution and regenerate its C extensions with Cython 3
"${PIP[@]}" download --no-deps --no-binary :all: --no-build-isolation \
    "learn2learn==0.2.0" -d "$WORK"
tar -xzf "$WORK"/learn2learn-0.2.0.tar.gz -C "$WORK"
SRC="$WORK/learn2learn-0.2.0"
rm -rf "$SRC/.eggs"  # old Cython eggs bundled in the sdist; never used
"$VENV/bin/cythonize" -3 --force \
    "$SRC/learn2learn/data/meta_dataset.pyx" \
    "$SRC/learn2learn/data/task_dataset.pyx" \
    "$SRC/learn2learn/data/transforms.pyx"
"${PIP[@]}" install --no-deps --no-build-isolation "$SRC"

"$VENV/bin/python" -W ignore -c \
    "import learn2learn, torch; print('learn2learn', learn2learn.__version__, 'torch', torch.__version__)"

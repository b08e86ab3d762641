#!/usr/bin/env bash
# Create a separate virtual environment holding Avalanche (avalanche-lib 0.6.0), for
# benchmarks/compare_avalanche.py only. Avalanche is never a dependency of metacl.
#
# Usage: bash benchmarks/setup_avalanche.sh [VENV_DIR]   (default /tmp/avalanche-venv)
# Then:  python benchmarks/compare_avalanche.py --avalanche-python VENV_DIR/bin/python
#
# Why these pins (see ANCHORS.md): Avalanche needs torchvision, and the torchvision on
# PyPI does not import beside metacl's CPU torch 2.13.0, so this venv holds its own
# torch 2.14.1 + torchvision 0.29.1 (CPU kernels; a large venv). Avalanche writes
# ~/.avalanche/config.json on import, so the comparison script points HOME at a
# scratch folder when it starts it.
set -euo pipefail

VENV=${1:-/tmp/avalanche-venv}

python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip setuptools wheel
"$VENV/bin/pip" install --quiet "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/pip" install --quiet "avalanche-lib==0.6.0"

mkdir -p "$VENV/home"
HOME="$VENV/home" "$VENV/bin/python" -c \
    "import avalanche, torch; print('avalanche', avalanche.__version__, 'torch', torch.__version__)"

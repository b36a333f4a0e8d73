#!/usr/bin/env bash
# One command that sets everything up on a fresh Debian/Ubuntu machine:
# the system libraries Qt/napari need (and Xvfb for the tests), the CPU build of torch,
# and medsam-gui itself (editable, with test extras).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxkbcommon-x11-0 \
libegl1 libgl1 libfontconfig1 libdbus-1-3 libxcb-image0 libxcb-render-util0 libxcb-shape0 \
libxcb-xinerama0 libxcb-randr0 libxcb-xfixes0 libxcb-xkb1 libxkbcommon0 libglib2.0-0 \
libgl1-mesa-dri libglx-mesa0 libegl-mesa0 libxcb-util1 libxrender1 libxi6 libsm6 libice6 fonts-dejavu-core"

if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || echo "warning: apt-get update failed; trying to install from the existing lists"
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -qq --no-install-recommends $APT_PACKAGES
else
  echo "apt-get not found: install Xvfb and the Qt xcb libraries with your system's package manager" >&2
fi

PY=${PYTHON:-python3}
# Pin the CPU build of torch first, so the range in pyproject does not pull the CUDA wheels.
"$PY" -m pip install ${PIP_FLAGS:-} "torch==${TORCH_VERSION:-2.13.0}"
"$PY" -m pip install ${PIP_FLAGS:-} -e ".[dev]"
echo "medsam-gui is set up. Run the tests with: python3 -m pytest"

#!/bin/sh
# Install Moonraker 0.11.0 (Klipper's API server, from PyPI) into its own virtualenv,
# .venv-moonraker at the repository root, for the Moonraker monitor tests. The tests run it
# unchanged against a peer of Klipper's host process on a Unix socket (tests/agent/peers/klippy.py).
# Its own virtualenv because Moonraker pins its dependencies; they must not decide ours.
# Idempotent: does nothing when that Moonraker is already there. Takes about a minute.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${MOONRAKER_VENV:-$ROOT/.venv-moonraker}
PYTHON=${PYTHON:-python3}
VERSION=0.11.0
if [ -x "$VENV/bin/moonraker" ] && "$VENV/bin/python" -c "
import importlib.metadata as m, sys
sys.exit(m.version('moonraker') != '$VERSION')" 2>/dev/null; then
    exit 0
fi
echo "installing Moonraker $VERSION into $VENV (about a minute)"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "moonraker==$VERSION"

#!/bin/sh
# Install OctoPrint 1.11.8 (with its bundled Virtual Printer) into its own virtualenv,
# .venv-octoprint at the repository root, for the OctoPrint monitor tests.
# Its own virtualenv because OctoPrint pins its dependencies; they must not decide ours.
# Idempotent: does nothing when that OctoPrint is already there. Takes about a minute.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${OCTOPRINT_VENV:-$ROOT/.venv-octoprint}
PYTHON=${PYTHON:-python3}
VERSION=1.11.8
if [ -x "$VENV/bin/octoprint" ] && "$VENV/bin/python" -c "
import importlib.metadata as m, sys
sys.exit(m.version('OctoPrint') != '$VERSION')" 2>/dev/null; then
    exit 0
fi
echo "installing OctoPrint $VERSION into $VENV (about a minute)"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "OctoPrint==$VERSION"

#!/usr/bin/env bash
# Set up .venv (with the test extras) and run the whole test suite on one single-thread worker per CPU core
# (pytest-xdist). Extra arguments go to pytest.
#   ./test.sh            the whole suite
#   ./test.sh --quick    the tests that need no training run (the inner loop)
# The browser tests drive the system chromium (Debian/Ubuntu package) with Playwright; it is installed here when
# missing and this user may install packages (root, or sudo without a password).
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh --test
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  echo "Installing chromium for the browser tests"
  if [[ $(id -u) == 0 ]]; then SUDO=(); else SUDO=(sudo -n); fi
  if ! { "${SUDO[@]}" apt-get install -y chromium >/dev/null 2>&1 ||
         { "${SUDO[@]}" apt-get update >/dev/null 2>&1 && "${SUDO[@]}" apt-get install -y chromium >/dev/null; }; }; then
    echo "test.sh: could not install chromium; install it (apt-get install chromium) and run again" >&2
    exit 1
  fi
fi
args=()
for arg in "$@"; do
  if [[ "$arg" == "--quick" ]]; then args+=(-m "not training"); else args+=("$arg"); fi
done
# whole files to a worker, the longest first (tests/conftest.py orders them)
exec .venv/bin/python -m pytest -n logical --dist loadfile --no-loadscope-reorder ${args[@]+"${args[@]}"}

#!/usr/bin/env bash
# Install headless Chromium (Debian package `chromium`) for the browser tests.
# Idempotent: does nothing when /usr/bin/chromium already exists.
set -euo pipefail

CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"

if [[ -x "${CHROMIUM_BIN}" ]]; then
    echo "chromium already installed: ${CHROMIUM_BIN}"
    exit 0
fi

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "error: root (or sudo) is needed to install chromium" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
${SUDO} apt-get update
${SUDO} apt-get install -y --no-install-recommends chromium fonts-dejavu-core

if [[ ! -x "${CHROMIUM_BIN}" ]]; then
    echo "error: chromium was installed but ${CHROMIUM_BIN} is missing" >&2
    exit 1
fi
"${CHROMIUM_BIN}" --version || true

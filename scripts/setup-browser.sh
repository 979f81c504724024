#!/usr/bin/env bash
# Install a headless browser (Debian's chromium) for the report's screenshot test.
# Idempotent: does nothing when chromium is already on PATH.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "chromium: $(chromium --version 2>/dev/null || echo present)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium is missing and this is not a Debian-like system (no apt-get); install chromium by hand" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "chromium is missing; run this script as root (it installs Debian's chromium package with apt-get)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends chromium >/dev/null 2>&1; then
    apt-get update -qq
    if ! apt-get install -y --no-install-recommends chromium; then
        echo "apt-get could not install chromium; check the machine's Debian sources and free space" >&2
        exit 1
    fi
fi
echo "chromium: $(chromium --version)"

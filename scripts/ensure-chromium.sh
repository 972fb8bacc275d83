#!/bin/sh
# The browser tests drive Debian's Chromium (/usr/bin/chromium) with Playwright; Playwright's
# own browser downloads are never used. Installs the package when it is missing and we may.
set -eu
CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "The browser tests need Debian's chromium at $CHROMIUM." >&2
    echo "Install it as root: apt-get install -y chromium" >&2
    exit 1
fi
echo "installing Debian's chromium for the browser tests" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends chromium >&2; then
    apt-get update >&2
    apt-get install -y --no-install-recommends chromium >&2
fi
test -x "$CHROMIUM"

#!/bin/sh
# Runs in the extracted, not yet active version: refuse to install if the package is incomplete.
set -eu
test -x bin/kiosk-browser
test -s VERSION
echo "pre-install: $(cat VERSION) is complete"

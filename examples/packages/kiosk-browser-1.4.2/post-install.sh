#!/bin/sh
# Runs after activation: a real package would restart the kiosk session here.
set -eu
date -u +%Y-%m-%dT%H:%M:%SZ > activated-at
echo "post-install: activated $(cat VERSION)"

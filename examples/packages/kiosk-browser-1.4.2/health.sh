#!/bin/sh
# Health check: the browser starts and reports the version this package claims to be.
set -eu
out=$(./bin/kiosk-browser)
case "$out" in
  "kiosk-browser $(cat VERSION) "*) echo "healthy: $out" ;;
  *) echo "unhealthy: $out" >&2; exit 1 ;;
esac

#!/bin/sh
echo "pre-remove: stopping kiosk-browser $(cat VERSION)"

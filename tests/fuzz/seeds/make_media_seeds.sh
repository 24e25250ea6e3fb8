#!/usr/bin/env bash
# Rebuilds the HDF5/PNG/JPEG seeds (needs libhdf5, libpng, libturbojpeg headers; no libtorch).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
corpus="$here/../corpus"
mkdir -p "$corpus/keras_h5" "$corpus/image"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
g++ -std=c++17 -O1 -o "$tmp/make_media_seeds" "$here/make_media_seeds.cpp" -I/usr/include/hdf5/serial \
  -L/usr/lib/x86_64-linux-gnu/hdf5/serial -lhdf5 -lpng -lturbojpeg
"$tmp/make_media_seeds" "$corpus"

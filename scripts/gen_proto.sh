#!/usr/bin/env bash
# Regenerates imesh/v1 from proto/. Usage: gen_proto.sh [OUT_ROOT] (default: repo root).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
py="${PYTHON:-.venv/bin/python}"
mkdir -p "$out/imesh/v1"
"$py" -m grpc_tools.protoc -I proto \
  --python_out="$out" --mypy_out="$out" --grpc_python_out="$out" --mypy_grpc_out="$out" \
  proto/imesh/v1/*.proto

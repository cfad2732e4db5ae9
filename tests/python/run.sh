#!/usr/bin/env bash
# Runs a Python client test against a running tesserad (TESSERA_ADDR=host:port).
# The client stubs are generated here, by grpcio-tools, from our .proto files, which the
# contract test proves wire-exact with shared/contracts.
#   usage: run.sh TEST_MODULE      (e.g. test_status_grpcio)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${TESSERA_PYENV:-$root/target/pyenv}"
stamp="$venv/.requirements-$(sha256sum "$here/requirements.txt" | cut -c1-16)"
mkdir -p "$(dirname "$venv")"
# Tests run in parallel: one of them builds the venv, the others wait for it.
exec 9>"$venv.lock"
flock 9
if [ ! -f "$stamp" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  touch "$stamp"
fi
flock -u 9
gen="$(mktemp -d)"
trap 'rm -rf "$gen"' EXIT
protos=(kms.v1.proto metastore-status.v1.proto tessera/status/v1/status.proto)
"$venv/bin/python" -m grpc_tools.protoc -I "$root/proto/proto" --python_out="$gen" --grpc_python_out="$gen" "${protos[@]}"
cd "$here"
PYTHONPATH="$gen:$here" "$venv/bin/python" -m unittest -v "$1"

#!/usr/bin/env bash
# Builds a Python plugin into a WebAssembly component with the pinned
# componentize-py (requirements.txt), installed into .venv beside this
# script on first use.
#
# Usage: bash build.sh [SOURCE_DIR [OUT.wasm]]
#   SOURCE_DIR  the folder holding app.py (default: this folder)
#   OUT.wasm    the component to write (default: SOURCE_DIR/plugin.wasm)
# Environment:
#   WIT         the WIT folder (default: ./wit if it exists, else ../../wit,
#               the repository's plugins/wit)
#   NO_INSTALL  set to 1 to fail instead of installing a missing tool
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "${1:-${here}}" && pwd)
out=$(realpath -m "${2:-${src}/plugin.wasm}")
if [[ -z "${WIT:-}" ]]; then
    if [[ -d "${here}/wit" ]]; then WIT="${here}/wit"; else WIT="${here}/../../wit"; fi
fi
venv="${here}/.venv"
pinned=$(sed -n 's/^componentize-py==//p' "${here}/requirements.txt")

if ! "${venv}/bin/componentize-py" --version 2>/dev/null | grep -qx "componentize-py ${pinned}"; then
    if [[ "${NO_INSTALL:-0}" == 1 ]]; then
        echo "error: componentize-py ${pinned} is not installed in ${venv}." >&2
        echo "       Run: bash scripts/test (it installs it), or: bash ${here}/build.sh once." >&2
        exit 1
    fi
    echo "--- installing componentize-py ${pinned} into ${venv}" >&2
    python3 -m venv "${venv}"
    "${venv}/bin/pip" install --quiet --disable-pip-version-check -r "${here}/requirements.txt"
fi

mkdir -p "$(dirname "${out}")"
cd "${src}"
# -w plugin: the world's name (its package is broadcast:plugin@0.2.0).
"${venv}/bin/componentize-py" -d "${WIT}" -w plugin componentize app -o "${out}" >/dev/null
echo "${out}"

#!/usr/bin/env bash
# Builds a JavaScript plugin into a WebAssembly component with the pinned
# componentize-js (package.json and package-lock.json), installed with
# `npm ci` beside this script on first use.
#
# Usage: bash build.sh [SOURCE.js [OUT.wasm]]
#   SOURCE.js   the plugin's module (default: plugin.js in this folder)
#   OUT.wasm    the component to write (default: plugin.wasm beside SOURCE.js)
# Environment:
#   WIT         the WIT folder (default: ./wit if it exists, else ../../wit,
#               the repository's plugins/wit)
#   NO_INSTALL  set to 1 to fail instead of installing a missing tool
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source_js=$(realpath "${1:-${here}/plugin.js}")
out=$(realpath -m "${2:-$(dirname "${source_js}")/plugin.wasm}")
if [[ -z "${WIT:-}" ]]; then
    if [[ -d "${here}/wit" ]]; then WIT="${here}/wit"; else WIT="${here}/../../wit"; fi
fi
tool="${here}/node_modules/.bin/componentize-js"
pinned=$(sed -n 's/.*"@bytecodealliance\/componentize-js": *"\([^"]*\)".*/\1/p' "${here}/package.json")

if [[ "$("${tool}" --version 2>/dev/null)" != "${pinned}" ]]; then
    if [[ "${NO_INSTALL:-0}" == 1 ]]; then
        echo "error: componentize-js ${pinned} is not installed in ${here}/node_modules." >&2
        echo "       Run: bash scripts/test (it installs it), or: bash ${here}/build.sh once." >&2
        exit 1
    fi
    echo "--- installing componentize-js ${pinned} (npm ci) in ${here}" >&2
    (cd "${here}" && npm ci --no-audit --no-fund --loglevel=error)
fi

mkdir -p "$(dirname "${out}")"
# -n plugin-json: the world's name (its package is broadcast:plugin@0.2.0):
# the `plugin` world with the hooks' records as JSON text, which
# JSON.parse turns into objects several times faster than the bindings
# componentize-js generates for records.
# -d http fetch-event: a plugin has no HTTP; without this the component
# imports wasi:http, which the router does not provide.
# The WIT path is given relative to the working directory: componentize-js
# cannot read it by an absolute path (nor can `jco componentize`).
"${tool}" "${source_js}" -w "$(realpath --relative-to=. "${WIT}")" -n plugin-json -d http fetch-event -o "${out}" >/dev/null
echo "${out}"

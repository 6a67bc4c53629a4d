#!/usr/bin/env bash
# Builds the repository's plugins as WebAssembly components into
# plugins/build/ (ignored by git), where the example configs and the tests
# load them from, and prints each file's size.
#
# Usage: bash plugins/build.sh [rust] [python] [javascript]   (default: rust)
#
# rust        every plugin crate (plugins/examples/*, plugins/testing/*,
#             plugins/templates/rust) for wasm32-wasip2, in release mode.
#             Needs: rustup target add wasm32-wasip2
# python      every folder with an app.py (plugins/templates/python,
#             plugins/examples/*, plugins/testing/*), with the pinned
#             componentize-py of plugins/templates/python
# javascript  every folder with a plugin.js, likewise, with the pinned
#             componentize-js of plugins/templates/javascript
#
# Python and JavaScript plugins are rebuilt only when a source, the WIT or
# the tools' pins changed. Their tools are not installed here: a missing
# one fails the build with the command that installs it (bash scripts/test
# installs both).
#
# The build goes to target/plugins so that it never invalidates the
# router's own build in target/. The size settings below are passed on the
# command line because the workspace's Cargo.toml belongs to the router.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly TARGET=wasm32-wasip2
readonly TARGET_DIR=target/plugins
readonly OUT=plugins/build

languages=("$@")
(( ${#languages[@]} > 0 )) || languages=(rust)
for language in "${languages[@]}"; do
    case "${language}" in
        rust|python|javascript) ;;
        *) echo "error: unknown language ${language} (rust, python or javascript)" >&2; exit 1 ;;
    esac
done
wants() { [[ " ${languages[*]} " == *" $1 "* ]]; }

# Prints the component name of a plugin folder: its name with - turned
# into _, and template_<language> for the templates.
component_name() {
    local dir=$1 name
    name=$(basename "${dir}")
    [[ "$(basename "$(dirname "${dir}")")" == templates ]] && name="template_${name}"
    echo "${name//-/_}"
}

# Whether OUT is missing or older than any of the given files or folders.
stale() {
    local out=$1; shift
    [[ ! -f "${out}" ]] && return 0
    [[ -n "$(find "$@" -newer "${out}" -type f -not -path '*/node_modules/*' -not -path '*/.venv/*' -not -path '*/__pycache__/*' -print -quit)" ]]
}

# Builds the Python or JavaScript plugins (folders holding ENTRY) with the
# template's build script.
build_guests() {
    local language=$1 entry=$2 pins=$3 dir name out
    for dir in plugins/templates/"${language}" plugins/examples/* plugins/testing/*; do
        [[ -f "${dir}/${entry}" ]] || continue
        name=$(component_name "${dir}")
        out="${OUT}/${name}.wasm"
        if stale "${out}" "${dir}/${entry}" plugins/wit "${pins}"; then
            echo "--- building ${dir} (${language})"
            local source=${dir}
            [[ "${language}" == javascript ]] && source="${dir}/${entry}"
            NO_INSTALL=1 bash "plugins/templates/${language}/build.sh" "${source}" "${OUT}/.${name}.$$.tmp" >/dev/null
            mv -f "${OUT}/.${name}.$$.tmp" "${out}"
        fi
        printf '%8d bytes  %s\n' "$(wc -c <"${out}")" "${out}"
    done
}

mkdir -p "${OUT}"
if wants python; then
    build_guests python app.py plugins/templates/python/requirements.txt
fi
if wants javascript; then
    build_guests javascript plugin.js plugins/templates/javascript/package-lock.json
fi
wants rust || exit 0

if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "${TARGET}"; then
    echo "--- adding the ${TARGET} target"
    rustup target add "${TARGET}" || {
        echo "error: the ${TARGET} target is missing; run: rustup target add ${TARGET}" >&2
        exit 1
    }
fi

# Every plugin crate: its package name, from its Cargo.toml.
packages=()
for manifest in plugins/examples/*/Cargo.toml plugins/testing/*/Cargo.toml plugins/templates/rust/Cargo.toml; do
    [[ -f "${manifest}" ]] || continue
    name=$(sed -n 's/^name *= *"\([^"]*\)".*/\1/p' "${manifest}" | head -n 1)
    [[ -n "${name}" ]] || { echo "error: no package name in ${manifest}" >&2; exit 1; }
    packages+=("${name}")
done
(( ${#packages[@]} > 0 )) || { echo "error: no plugin crates found" >&2; exit 1; }

echo "--- building ${packages[*]} for ${TARGET}"
cargo build --release --target "${TARGET}" --target-dir "${TARGET_DIR}" \
    --config 'profile.release.opt-level=3' \
    --config 'profile.release.lto=true' \
    --config 'profile.release.codegen-units=1' \
    --config 'profile.release.strip=true' \
    --config 'target.wasm32-wasip2.rustflags=["-C", "link-arg=-zstack-size=131072"]' \
    "${packages[@]/#/--package=}"

echo "--- ${OUT}/"
for package in "${packages[@]}"; do
    file="${package//-/_}.wasm"
    # Copy, then rename: a reader never sees a half-written file.
    cp "${TARGET_DIR}/${TARGET}/release/${file}" "${OUT}/.${file}.$$.tmp"
    mv -f "${OUT}/.${file}.$$.tmp" "${OUT}/${file}"
    printf '%8d bytes  %s\n' "$(wc -c <"${OUT}/${file}")" "${OUT}/${file}"
done

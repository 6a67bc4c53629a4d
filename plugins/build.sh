#!/usr/bin/env bash
# Builds every plugin crate (plugins/examples/* and plugins/testing/*) as a
# WebAssembly component for wasm32-wasip2, in release mode, and copies the
# .wasm files to plugins/build/ (ignored by git), where the example configs
# load them from. Prints each file's size.
#
# Usage: bash plugins/build.sh            (from anywhere in the repo)
# Needs: rustup target add wasm32-wasip2
#
# The build goes to target/plugins so that it never invalidates the
# router's own build in target/. The size settings below are passed on the
# command line because the workspace's Cargo.toml belongs to the router.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly TARGET=wasm32-wasip2
readonly TARGET_DIR=target/plugins
readonly OUT=plugins/build

if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "${TARGET}"; then
    echo "--- adding the ${TARGET} target"
    rustup target add "${TARGET}" || {
        echo "error: the ${TARGET} target is missing; run: rustup target add ${TARGET}" >&2
        exit 1
    }
fi

# Every plugin crate: its package name, from its Cargo.toml.
packages=()
for manifest in plugins/examples/*/Cargo.toml plugins/testing/*/Cargo.toml; do
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

mkdir -p "${OUT}"
echo "--- ${OUT}/"
for package in "${packages[@]}"; do
    file="${package//-/_}.wasm"
    # Copy, then rename: a reader never sees a half-written file.
    cp "${TARGET_DIR}/${TARGET}/release/${file}" "${OUT}/.${file}.$$.tmp"
    mv -f "${OUT}/.${file}.$$.tmp" "${OUT}/${file}"
    printf '%8d bytes  %s\n' "$(wc -c <"${OUT}/${file}")" "${OUT}/${file}"
done

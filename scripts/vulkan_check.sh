#!/usr/bin/env bash
# The offload tier on a real GPU backend without a GPU: llama.cpp's Vulkan backend on Mesa's
# software Vulkan driver (lavapipe, an `llvmpipe` device). One command from a clean clone:
#
#   bash scripts/vulkan_check.sh          # build (cached) then test
#   bash scripts/vulkan_check.sh build    # only the Debian packages and the Vulkan wheel
#   bash scripts/vulkan_check.sh test     # only the tier, on a build made before
#
# What it does:
#   1. Debian packages (as root with apt; otherwise it checks and names what is missing):
#      vulkan-tools libvulkan-dev glslc spirv-headers from bookworm, and mesa-vulkan-drivers from
#      bookworm-backports (Mesa 25; bookworm's own 22.3 is older than we tested), added if missing
#      from the archive this machine's apt sources name for bookworm (its mirror, local or not).
#   2. Vulkan headers: bookworm's 1.3.239 are older than ggml-vulkan.cpp needs (it uses
#      vk::LayerSettingEXT, 1.3.272+). We take the headers from Debian trixie's libvulkan-dev
#      package, downloaded from that same archive with a private apt state (the machine's apt
#      sources stay as they are) and unpacked into the build cache; only its include/ is used,
#      and the build links bookworm's own loader (libvulkan.so.1). No llama.cpp source is patched.
#   3. A llama-cpp-python wheel with GGML_VULKAN=on, built once and kept in
#      $EDGEPREF_BUILD_CACHE (default ~/.cache/edgepref-build), keyed by version and flags; pip's
#      own wheel cache is bypassed so a Vulkan wheel never stands in for a plain CPU install.
#   4. A venv of its own (.vulkan-venv, ignored by git) with that wheel and edgepref[test], then
#      the tier: tests/offload/ with GGML_VK_VISIBLE_DEVICES=0. ggml-vulkan skips CPU-type
#      devices unless that variable names them; the tier's CPU references run in subprocesses
#      with it unset, so one build serves both sides of every comparison.
#
# Takes about 16 minutes to build on 2 cores (once) and about 10 to test.
set -euo pipefail

what="${1:-all}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
LLAMA_CPP_PYTHON_VERSION="0.3.36"
cache="${EDGEPREF_BUILD_CACHE:-$HOME/.cache/edgepref-build}"
venv="${EDGEPREF_VULKAN_VENV:-$here/.vulkan-venv}"
python="${PYTHON:-python3}"
step() { echo; echo "== $(date +%T) $*"; }
mkdir -p "$cache"
# the system's Vulkan loader, in the multiarch library dir (other packages, Chromium's among them,
# bundle a libvulkan.so.1 of their own elsewhere under /usr/lib)
libdir="/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

# The URI this machine's own apt sources take Debian's main archive from: the first `deb` entry
# whose suites include SUITE itself (bookworm; not bookworm-security, not bookworm-updates), in
# one-line files (/etc/apt/sources.list, sources.list.d/*.list: `deb [opts] URI SUITE COMP...`)
# and deb822 files (sources.list.d/*.sources: `Types:`, `URIs:`, `Suites:`, `Enabled:`), so
# that a machine behind a local mirror keeps using it. FILES (default: those) for tests.
debian_mirror() {
    local suite="$1" files=() f uri=""
    shift
    if [ $# = 0 ]; then
        set -- /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources
    fi
    for f in "$@"; do
        if [ -f "$f" ]; then files+=("$f"); fi
    done
    if [ ${#files[@]} -gt 0 ]; then
        uri="$(awk -v suite="$suite" '
            function has(list, word,   n, i, w) {
                n = split(list, w); for (i = 1; i <= n; i++) if (w[i] == word) return 1; return 0
            }
            function stanza(   u) {
                if (!found && has(types, "deb") && has(suites, suite) && tolower(enabled) != "no") {
                    split(uris, u); if (u[1] != "") { print u[1]; found = 1 }
                }
                types = uris = suites = enabled = key = ""
            }
            found { exit }
            FNR == 1 && NR > 1 && deb822 { stanza(); if (found) exit }
            FNR == 1 { deb822 = FILENAME ~ /\.sources$/ }
            deb822 && /^[ \t]*#/ { next }
            deb822 && /^[ \t]*$/ { stanza(); next }
            deb822 && /^[ \t]/ {  # a field continued on the next line
                if (key == "types") types = types " " $0; else if (key == "uris") uris = uris " " $0
                else if (key == "suites") suites = suites " " $0
                next
            }
            deb822 {
                key = tolower(substr($0, 1, index($0, ":") - 1)); value = substr($0, index($0, ":") + 1)
                if (key == "types") types = value; else if (key == "uris") uris = value
                else if (key == "suites") suites = value
                else if (key == "enabled") { enabled = value; gsub(/[ \t]/, "", enabled) }
                next
            }
            {
                sub(/#.*/, ""); if ($1 != "deb") next
                i = 2; if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }  # [options]
                if ($(i + 1) == suite) { print $i; found = 1; exit }
            }
            END { if (deb822 && !found) stanza() }
        ' "${files[@]}")"
    fi
    if [ -z "$uri" ]; then
        echo "no apt source for Debian's $suite archive on this machine (a deb entry with suite $suite in" \
            "/etc/apt/sources.list, sources.list.d/*.list or *.sources): add your mirror's, then run this again" >&2
        return 1
    fi
    echo "$uri"
}

install_packages() {
    local missing=()
    command -v vulkaninfo >/dev/null || missing+=(vulkan-tools)
    command -v glslc >/dev/null || missing+=(glslc)
    [ -e /usr/include/spirv/unified1/spirv.hpp ] || missing+=(spirv-headers)
    [ -e "$libdir/libvulkan.so" ] || missing+=(libvulkan-dev)
    local mesa
    mesa="$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)"
    if [ ${#missing[@]} = 0 ] && [[ "$mesa" == *bpo12* || "$mesa" == 2[5-9].* ]]; then
        return 0
    fi
    if ! command -v apt-get >/dev/null; then
        echo "missing: ${missing[*]} mesa-vulkan-drivers>=25; this script knows Debian's packages only:"
        echo "install the Vulkan SDK or your distribution's equivalents, then run it again"
        exit 1
    fi
    step "Debian packages: ${missing[*]:-} mesa-vulkan-drivers (bookworm-backports)"
    local list=/etc/apt/sources.list.d/edgepref-bookworm-backports.list
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        local mirror
        mirror="$(debian_mirror bookworm)" || exit 1
        echo "deb $mirror bookworm-backports main" | as_root tee "$list" >/dev/null \
            || { echo "need root to add bookworm-backports; run this script with sudo"; exit 1; }
    fi
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        vulkan-tools libvulkan-dev glslc spirv-headers >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports \
        mesa-vulkan-drivers >/dev/null
}

# Trixie's libvulkan-dev, unpacked into $cache/vulkan-headers; echoes its include dir.
vulkan_headers() {
    local dest="$cache/vulkan-headers"
    if [ ! -f "$dest/usr/include/vulkan/vulkan.hpp" ]; then
        step "Vulkan headers from Debian trixie's libvulkan-dev (private apt state, nothing installed)" >&2
        local tmp mirror
        mirror="$(debian_mirror bookworm)" || exit 1
        tmp="$(mktemp -d)"
        mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
        echo "deb $mirror trixie main" > "$tmp/sources.list"  # the same archive, the next release
        local opts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=-"
                    -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache"
                    -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1")
        apt-get "${opts[@]}" update -qq >&2
        (cd "$tmp" && apt-get "${opts[@]}" download libvulkan-dev >&2)
        rm -rf "$dest" && mkdir -p "$dest"
        dpkg -x "$tmp"/libvulkan-dev_*.deb "$dest"
        rm -rf "$tmp"
    fi
    echo "$dest/usr/include"
}

build_wheel() {
    local include loader flags key dir
    include="$(vulkan_headers)"
    loader="$libdir/libvulkan.so.1"
    flags="-DGGML_VULKAN=on -DVulkan_INCLUDE_DIR=$include -DVulkan_LIBRARY=$loader"
    key="$(echo "$LLAMA_CPP_PYTHON_VERSION $flags $("$python" -c 'import sys; print(sys.version_info[:2])')" \
        | sha256sum | cut -c1-12)"
    dir="$cache/wheels-vulkan-$key"
    if ! ls "$dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
        step "build llama-cpp-python $LLAMA_CPP_PYTHON_VERSION with GGML_VULKAN=on (about 16 minutes on 2 cores)"
        mkdir -p "$dir.tmp"
        CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
            "$python" -m pip wheel --no-cache-dir --no-deps --no-binary llama-cpp-python \
            -w "$dir.tmp" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" > "$cache/build-vulkan.log" 2>&1 \
            || { tail -40 "$cache/build-vulkan.log"; echo "the Vulkan build failed: $cache/build-vulkan.log"; exit 1; }
        rm -rf "$dir" && mv "$dir.tmp" "$dir"
    fi
    echo "$dir" > "$cache/vulkan-wheel-dir"
    step "wheel: $(ls "$dir"/llama_cpp_python-*.whl)"
}

make_venv() {
    local dir
    dir="$(cat "$cache/vulkan-wheel-dir")"
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv"
    fi
    step "venv $venv: the Vulkan wheel, then edgepref[test]"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps \
        "$dir"/llama_cpp_python-*.whl
    # the installed Vulkan build satisfies edgepref's llama-cpp-python range, so pip keeps it
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
    "$venv/bin/python" - <<'EOF'
import os, llama_cpp
os.environ["GGML_VK_VISIBLE_DEVICES"] = "0"
print("llama_cpp", llama_cpp.__version__, "offload supported:", bool(llama_cpp.llama_supports_gpu_offload()))
EOF
}

if [ "$what" = build ] || [ "$what" = all ]; then
    install_packages
    build_wheel
    make_venv
fi
# Mesa compiles lavapipe's shaders on first use and caches them; kept beside the wheel, a later
# run (CI included, where the build cache is kept) skips that compile: the first tier on a machine
# took 10 min 44 s, the next 3 min 3 s (2-core AMD EPYC).
export MESA_SHADER_CACHE_DIR="${MESA_SHADER_CACHE_DIR:-$cache/mesa-shader-cache}"
if [ "$what" = test ] || [ "$what" = all ]; then
    step "device"
    GGML_VK_VISIBLE_DEVICES=0 vulkaninfo --summary 2>/dev/null | grep -E "deviceName|deviceType|driverInfo" || true
    step "the offload tier: tests/offload on the Vulkan device"
    report="${EDGEPREF_OFFLOAD_REPORT:-$cache/offload-report.json}"
    rm -f "$report"
    GGML_VK_VISIBLE_DEVICES=0 EDGEPREF_OFFLOAD_TIER=vulkan EDGEPREF_OFFLOAD_REPORT="$report" \
        "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/offload || status=$?
    step "measured (also in $report)"
    cat "$report" 2>/dev/null || echo "(no report: the tier stopped before its end)"
    exit "${status:-0}"
fi

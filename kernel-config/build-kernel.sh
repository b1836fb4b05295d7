#!/usr/bin/env bash
# Builds the Palisade guest kernel (an uncompressed ELF vmlinux with a PVH entry)
# from Debian's linux-source-6.12 and the fragment beside this script.
#
# The result is cached outside the clone, keyed by a hash of the fragment, the
# recipe version and the source package version, so only the first build on a machine pays.
# Prints the path of the cached vmlinux on stdout (progress goes to stderr).
#
#   kernel-config/build-kernel.sh            build (or find) the kernel, print its path
#   kernel-config/build-kernel.sh --key      print the cache key only
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fragment="$here/guest.config"
src_pkg=linux-source-6.12
cache_root="${PALISADE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/palisade}"
jobs="${PALISADE_KERNEL_JOBS:-$(nproc)}"

say() { printf '[kernel] %s\n' "$*" >&2; }
die() { printf 'build-kernel: %s\n' "$*" >&2; exit 1; }

need_pkgs=()
dpkg-query -W -f='${Status}' "$src_pkg" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$src_pkg")
for tool in make:make gcc:gcc flex:flex bison:bison bc:bc xz:xz-utils; do
  command -v "${tool%%:*}" >/dev/null || need_pkgs+=("${tool#*:}")
done
[ -e /usr/include/libelf.h ] || need_pkgs+=(libelf-dev)
[ -e /usr/include/openssl/ssl.h ] || need_pkgs+=(libssl-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  say "installing ${need_pkgs[*]} from Debian's archive"
  [ "$(id -u)" = 0 ] || die "need root to install ${need_pkgs[*]} (or install them with apt-get first)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"; } >&2 \
    || die "apt-get install ${need_pkgs[*]} failed"
fi

src_version=$(dpkg-query -W -f='${Version}' "$src_pkg")
# Bump when the build recipe below changes what comes out (not for cosmetic edits).
recipe_version=1
key=$( { cat "$fragment"; echo "$src_version recipe $recipe_version"; } | sha256sum | cut -c1-16)
if [ "${1:-}" = "--key" ]; then echo "$key"; exit 0; fi

out_dir="$cache_root/kernel/$key"
if [ -s "$out_dir/vmlinux" ]; then
  say "cached: $out_dir/vmlinux ($src_pkg $src_version)"
  echo "$out_dir/vmlinux"; exit 0
fi

mkdir -p "$cache_root/kernel"
exec 9>"$cache_root/kernel/.lock"
say "waiting for the kernel build lock" ; flock 9
if [ -s "$out_dir/vmlinux" ]; then echo "$out_dir/vmlinux"; exit 0; fi

build="$cache_root/kernel/build-$key"
rm -rf "$build"; mkdir -p "$build"
trap 'rm -rf "$build"' EXIT
tarball=$(ls /usr/src/linux-source-6.12.tar.* 2>/dev/null | head -n1)
[ -n "$tarball" ] || die "no /usr/src/linux-source-6.12.tar.* (is $src_pkg installed?)"
say "unpacking $tarball ($src_pkg $src_version)"
tar -xf "$tarball" -C "$build" --strip-components=1

cd "$build"
say "configuring: tinyconfig + $fragment"
make -s ARCH=x86_64 tinyconfig >/dev/null
KCONFIG_CONFIG=.config scripts/kconfig/merge_config.sh -m -O . .config "$fragment" >/dev/null
make -s ARCH=x86_64 olddefconfig >/dev/null

# Every symbol the fragment asks for must have stuck: tinyconfig's EXPERT defaults
# silently drop things (see shared kernel notes).
missing=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*) grep -qxF "$line" .config || { say "did not stick: $line (got: $(grep -E "^(# )?${line%%=*}[= ]" .config || echo unset))"; missing=1; } ;;
    "# CONFIG_"*" is not set") sym=${line#\# }; sym=${sym%% *}; grep -qE "^$sym=" .config && { say "should be off: $sym"; missing=1; } ;;
  esac
done < "$fragment"
[ "$missing" = 0 ] || die "kernel config: requested symbols did not stick (see above); fix $fragment"

# Progress: count compiled objects against the count measured for this config.
expected=${PALISADE_KERNEL_EXPECTED_OBJECTS:-1700}
start=$(date +%s)
say "building vmlinux with -j$jobs (several minutes on 2 cores; only the first build on a machine pays)"
set +e
nice -n 10 make ARCH=x86_64 -j"$jobs" vmlinux 2>&1 | awk -v total="$expected" -v start="$start" '
  / CC | AS | LD | AR / { n++; if (n % 50 == 0) { pct = int(100 * n / total); if (pct > 99) pct = 99;
      printf "[kernel] %4d objects (~%d%%), %ds\n", n, pct, systime() - start > "/dev/stderr"; fflush("/dev/stderr") } }
  /error|Error/ { print > "/dev/stderr" }
  END { printf "[kernel] %d objects compiled\n", n > "/dev/stderr" }'
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 0 ] || die "make vmlinux failed (exit $rc); rerun with PALISADE_KERNEL_JOBS=1 to see the first error clearly"
grep -q . <(readelf -n vmlinux | grep -i 'Xen\|PVH\|0x00000012') || die "vmlinux has no PVH note"

mkdir -p "$out_dir.tmp"
cp vmlinux "$out_dir.tmp/vmlinux"
cp .config "$out_dir.tmp/config"
echo "$src_pkg $src_version" > "$out_dir.tmp/source-version"
rm -rf "$out_dir"; mv "$out_dir.tmp" "$out_dir"
say "built in $(( $(date +%s) - start ))s: $out_dir/vmlinux"
echo "$out_dir/vmlinux"

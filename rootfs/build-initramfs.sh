#!/usr/bin/env bash
# Builds the guest's initramfs: the static guest agent as /init and nothing else
# (the agent mounts /proc, /sys, /dev and friends itself; container root filesystems
# come on virtio-blk devices).
#
#   rootfs/build-initramfs.sh OUT.cpio
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
out=${1:?usage: build-initramfs.sh OUT.cpio}
target=x86_64-unknown-linux-gnu

printf '[rootfs] building the static guest agent\n' >&2
# crt-static links glibc statically: the agent is PID 1 of an initramfs with no libraries.
(cd "$repo" && CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --quiet --release -p palisade-agent --target "$target")
agent="${CARGO_TARGET_DIR:-$repo/target}/$target/release/palisade-agent"
file "$agent" | grep -q 'static' || { echo "build-initramfs: $agent is not statically linked" >&2; exit 1; }

stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/dev" "$stage/proc" "$stage/sys" "$stage/run" "$stage/tmp"
# The kernel opens /dev/console for PID 1's stdio before the agent mounts devtmpfs.
mknod -m 600 "$stage/dev/console" c 5 1
mknod -m 666 "$stage/dev/null" c 1 3
install -m 0755 "$agent" "$stage/init"
strip "$stage/init" 2>/dev/null || true
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) > "$out.tmp"
mv "$out.tmp" "$out"
printf '[rootfs] initramfs: %s (%s bytes)\n' "$out" "$(stat -c %s "$out")" >&2

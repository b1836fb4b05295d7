#!/usr/bin/env bash
# Builds the default container image: Debian's busybox-static with its applets,
# the directories a process expects, as a read-only erofs image.
#
#   rootfs/build-busybox-image.sh OUT.erofs
set -euo pipefail
out=${1:?usage: build-busybox-image.sh OUT.erofs}
busybox=/bin/busybox
[ -x "$busybox" ] && file -L "$busybox" | grep -q 'statically linked' \
  || { echo "build-busybox-image: $busybox is not Debian's static busybox: apt-get install busybox-static" >&2; exit 1; }
command -v mkfs.erofs >/dev/null || { echo "build-busybox-image: mkfs.erofs missing: apt-get install erofs-utils" >&2; exit 1; }

stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,home,var/tmp,mnt}
chmod 1777 "$stage/tmp" "$stage/var/tmp"; chmod 0700 "$stage/root"
cp "$busybox" "$stage/bin/busybox"
for applet in $("$busybox" --list-full); do
  [ "$applet" = bin/busybox ] && continue
  mkdir -p "$stage/$(dirname "$applet")"
  ln -sf /bin/busybox "$stage/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$stage/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$stage/etc/group"
printf 'palisade\n' > "$stage/etc/hostname"
mkfs.erofs --quiet -T0 --all-root "$out.tmp" "$stage" >/dev/null
mv "$out.tmp" "$out"
printf '[rootfs] busybox image: %s (%s bytes)\n' "$out" "$(stat -c %s "$out")" >&2

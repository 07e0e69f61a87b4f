#!/bin/sh
# pi-search-usb DEVICE: install the signed bundle on a USB stick (the folder pi-search-bundle at its top),
# started by udev through pi-search-usb@.service when a stick labelled PISEARCH is plugged in. The stick is
# mounted read-only, the bundle is checked against [index] trusted_keys (none set: nothing is installed) and
# installed as the pi-search user (checked whole, the other slot, self-check, switch); then it is unmounted.
set -eu

DEV=${1:?usage: pi-search-usb DEVICE}
PI_SEARCH=${PI_SEARCH:-/opt/pi-search/venv/bin/pi-search}
CONFIG=${PI_SEARCH_CONFIG:-/etc/pi-search/config.toml}
RUN_AS=${PI_SEARCH_USER:-pi-search}
FOLDER=pi-search-bundle

MNT=$(mktemp -d "${TMPDIR:-/tmp}/pi-search-usb.XXXXXX")
cleanup() {
  umount "$MNT" 2>/dev/null || true
  rmdir "$MNT" 2>/dev/null || true
}
trap cleanup EXIT

OPTS=ro,nosuid,nodev,noexec
case "$(blkid -o value -s TYPE "$DEV" 2>/dev/null || true)" in
  vfat | exfat | ntfs | ntfs3)   # no owners on the stick: let the pi-search user read it
    OPTS="$OPTS,uid=$(id -u "$RUN_AS"),gid=$(id -g "$RUN_AS"),fmask=0133,dmask=0022" ;;
esac
mount -o "$OPTS" "$DEV" "$MNT"

BUNDLE="$MNT/$FOLDER"
if [ ! -f "$BUNDLE/manifest.json" ]; then
  echo "pi-search-usb: $DEV has no $FOLDER/manifest.json; copy the signed bundle folder to the stick as $FOLDER" >&2
  exit 1
fi
# Only a bundle signed by a trusted key comes in from a stick (verify refuses when trusted_keys is empty).
runuser -u "$RUN_AS" -- "$PI_SEARCH" index verify "$BUNDLE" --config "$CONFIG"
runuser -u "$RUN_AS" -- "$PI_SEARCH" index install "$BUNDLE" --config "$CONFIG"
echo "pi-search-usb: installed the bundle from $DEV; the stick can be removed" >&2

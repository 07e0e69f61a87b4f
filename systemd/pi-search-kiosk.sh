#!/bin/sh
# Opens the pi-search page full screen once the daemon answers /healthz; started from labwc's autostart.
# Installed by install.sh --kiosk as /opt/pi-search/bin/pi-search-kiosk.
URL=${PI_SEARCH_URL:-http://127.0.0.1:8080}
WAIT=${PI_SEARCH_KIOSK_WAIT:-180}

# Wait until /healthz answers 200 (camera, model and index up); after WAIT seconds open the page anyway,
# so the screen shows what is wrong instead of staying empty.
i=0
while [ "$i" -lt "$WAIT" ]; do
  if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
      "$URL/healthz" 2>/dev/null; then
    break
  fi
  i=$((i + 1))
  sleep 1
done

for browser in chromium chromium-browser; do
  if command -v "$browser" >/dev/null 2>&1; then
    exec "$browser" --kiosk --noerrdialogs --disable-infobars --no-first-run --disable-session-crashed-bubble \
      --disable-features=Translate --check-for-update-interval=31536000 --disable-background-networking \
      --disable-component-update --disable-sync --password-store=basic "$URL/"
  fi
done
echo "pi-search-kiosk: no chromium or chromium-browser found; install it: sudo apt-get install chromium" >&2
exit 1

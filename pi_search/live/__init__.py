"""The served bundle plus the items taught on the kiosk, searched as one view, and the teaching service."""

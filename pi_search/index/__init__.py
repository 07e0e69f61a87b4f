"""The bundle format, owned in one place: manifest, files, store, backends, items, writing, the live view."""

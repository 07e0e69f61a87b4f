"""The bundle format and nothing else: typed manifest, files and the one swap, opening, searching, writing."""

"""Barcodes: reading them from images (zxing-cpp, imported lazily) and naming catalog items by them."""

"""The image model: the LiteRT extractor, where the shipped model is, and how images are framed for it."""

"""Errors a user can act on: each says what failed, where, and what to do next."""


class PiSearchError(Exception):
    """A failure with a one-line message meant for the user (no traceback needed)."""


class ModelError(PiSearchError):
    """The model file is missing, corrupt or not usable as an image extractor."""


class RuntimeMissingError(PiSearchError):
    """No TFLite runtime package is installed."""


class ImageError(PiSearchError):
    """An image could not be read or decoded."""


class BundleError(PiSearchError):
    """An index bundle is missing, corrupt or does not match the extractor."""


class CatalogError(PiSearchError):
    """A catalog directory cannot be read."""


class SourceError(PiSearchError):
    """A camera or frame source failed."""


class ConfigError(PiSearchError):
    """The configuration file or a flag has a bad key or value."""

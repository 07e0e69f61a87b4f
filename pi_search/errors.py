"""Errors a user can act on: each says what failed, where, and what to do next.

Each class carries the HTTP ``status`` the web API answers with when it reaches a request (one handler in
``pi_search.web.errors`` maps them); on the command line every one is a one-line message and exit status 2.
"""


class PiSearchError(Exception):
    """A failure with a one-line message meant for the user (no traceback needed)."""

    status = 500


class BadInput(PiSearchError):
    """What the caller sent is wrong (a field, a file, an id): fix the request."""

    status = 400


class NotFound(PiSearchError):
    """The thing asked for does not exist."""

    status = 404


class Conflict(PiSearchError):
    """The request clashes with the current state (an id taken, an item already removed, a broken bundle)."""

    status = 409


class TooLarge(BadInput):
    """The request or a file in it is over a limit."""

    status = 413


class Unsupported(BadInput):
    """The request or a file in it has a type that is not accepted."""

    status = 415


class Busy(PiSearchError):
    """The appliance cannot take this now (every slot in use): try again in a moment."""

    status = 503


class ModelError(PiSearchError):
    """The model file is missing, corrupt or not usable as an image extractor."""


class RuntimeMissingError(PiSearchError):
    """No TFLite runtime package is installed."""


class ImageError(BadInput):
    """An image could not be read or decoded."""


class BundleError(PiSearchError):
    """An index bundle is missing, corrupt or does not match the extractor."""


class CatalogError(BadInput):
    """A catalog directory cannot be read, or an item's id, title, price or shots are not usable."""


class NoSuchItem(NotFound, CatalogError):
    """An item id that is not (or no longer) in the catalog."""


class ItemConflict(Conflict, CatalogError):
    """An item id already taught or already removed."""


class SourceError(PiSearchError):
    """A camera or frame source failed."""


class ConfigError(PiSearchError):
    """The configuration file or a flag has a bad key or value."""

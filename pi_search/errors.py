"""Errors a user can act on: each says what failed, where, and what to do next.

The web API answers each class with the HTTP status ``pi_search.web.errors.STATUS`` gives it (the one place
they are mapped); on the command line every one is a one-line message and exit status 2.
"""


class PiSearchError(Exception):
    """A failure with a one-line message meant for the user (no traceback needed)."""


class BadInput(PiSearchError):
    """What the caller sent is wrong (a field, a file, an id): fix the request."""


class NotFound(PiSearchError):
    """The thing asked for does not exist."""


class Conflict(PiSearchError):
    """The request clashes with the current state (an id taken, an item already removed, a broken bundle)."""


class TooLarge(BadInput):
    """The request or a file in it is over a limit."""


class Unsupported(BadInput):
    """The request or a file in it has a type that is not accepted."""


class Busy(PiSearchError):
    """The appliance cannot take this now (every slot in use): try again in a moment."""


class Unavailable(PiSearchError):
    """Not there yet (the camera is starting, no frame has come): try again shortly."""


class NoCatalog(Unavailable):
    """No bundle is served (none yet, or none could be loaded): build or install one."""


class BundleRefused(Conflict):
    """A bundle put in place was refused by its checks; the bundle in use keeps serving."""


class Refused(PiSearchError):
    """The request is not allowed from here (another site, no token where one is needed, a wrong PIN)."""


class NeedsToken(Refused):
    """The daemon has a token and the request did not bring it."""


class Locked(Refused):
    """Teaching is locked on this screen until it is unlocked with the PIN or the token."""


class TooManyTries(Refused):
    """Too many wrong attempts: wait before trying again."""


class NothingFound(BadInput):
    """The input was read but holds nothing usable (a photo without a barcode)."""


class NoSpace(PiSearchError):
    """The kiosk has no room to store what was sent."""


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

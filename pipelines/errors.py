"""The loaders' own error type (kept free of heavy imports, so anything may catch it)."""


class LoaderError(Exception):
    """An image a loader cannot use (missing, unreadable, undecodable); the
    message is one line naming the file. Entry points print it without a traceback."""

"""The loaders' own error type (kept free of heavy imports, so anything may catch it)."""


class LoaderError(Exception):
    """An image a loader cannot use (missing, unreadable, undecodable), or a
    loader that cannot start; the message is one line naming the culprit. Entry points print it without a traceback."""

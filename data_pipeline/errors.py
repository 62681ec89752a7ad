"""The data pipeline's error for bad input: a file, line, row, shard or setting the user gave.

Every check of the user's data raises :class:`DataError` with a message naming what is wrong and
where, so the CLI can print that one line (exit status 2) instead of a traceback. It subclasses
ValueError, so callers that catch ValueError keep working.
"""


class DataError(ValueError):
    """Bad input data or data settings; the message names the file, line, row or key."""

"""The one exception type the CLI turns into a one-line message and a non-zero exit code."""


class ScratchLMError(Exception):
    """A user-facing error: bad input, bad config, a file of the wrong kind.

    The message must name the problem (the file, the key, the value) and, where there is one,
    the fix. The CLI prints it as `scratchlm: error: <message>` and exits with status 1.
    """


class InvalidArgument(ScratchLMError, ValueError):
    """A setting or argument outside its range (a negative count, top_p above 1): a ValueError for Python
    callers, a one-line error for the CLI."""

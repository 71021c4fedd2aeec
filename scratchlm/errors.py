"""The one exception type the CLI turns into a one-line message and a non-zero exit code."""


class ScratchLMError(Exception):
    """A user-facing error: bad input, bad config, a file of the wrong kind.

    The message must name the problem (the file, the key, the value) and, where there is one,
    the fix. The CLI prints it as `scratchlm: error: <message>` and exits with status 1.
    """

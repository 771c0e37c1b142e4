"""Errors the command line reports as one line instead of a traceback."""


class UserError(Exception):
    """Bad input from the user (arguments, files, data): printed as `alexnet: error: ...`."""


# What the command line prints as one line (`alexnet: error: ...`) rather than as a traceback.
REPORTED = (UserError, ValueError, OSError, RuntimeError)


def one_line(e):
    """The first line of an exception's message, or its type's name when the message is empty."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

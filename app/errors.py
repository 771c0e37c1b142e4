"""Errors the command line reports as one line instead of a traceback."""


class UserError(Exception):
    """Bad input from the user (arguments, files, data): printed as `alexnet: error: ...`."""

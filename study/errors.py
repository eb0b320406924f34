"""The one error type the command line turns into a one-line message and exit code 2."""


class UsageError(ValueError):
    """Bad input from the user: a flag, a file, an address. The message names the problem."""

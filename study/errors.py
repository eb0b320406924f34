"""The errors the command line turns into one line: bad input (exit code 2), a full disk (75)."""


class UsageError(ValueError):
    """Bad input from the user: a flag, a file, an address. The message names the problem."""


class StorageFull(OSError):
    """A study's storage ran out of space: the message (one line) names the folder, the free space
    and what it needs; the study is left for --resume."""

    exit_code = 75  # sysexits.h EX_TEMPFAIL: free space and try again

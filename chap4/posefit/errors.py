"""What can go wrong, as the user sees it: a one-line error and an exit code."""

EXIT_USAGE = 2  # bad input: flags, files, folders
EXIT_NAN = 3  # the loss or the pose became non-finite
EXIT_INTERRUPTED = 130  # Ctrl-C


class UserError(Exception):
    """A problem the user can fix; printed as one line, no traceback."""

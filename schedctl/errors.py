"""What schedctl itself can fail with, as opposed to the daemon's refusals (DBusError):
main turns each into its exit status."""


class UsageError(Exception):
    """Bad command-line input, found before any call: exit 2, as argparse does."""


class Failure(Exception):
    """Something on the client side failed (e.g. reading a job's output): exit 1 with this message."""

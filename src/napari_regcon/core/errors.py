"""The one exception type a user sees: its message is a single clear sentence."""


class RegconError(Exception):
    """Bad input or a failed operation that the user can fix; ``str(err)`` is shown as is."""

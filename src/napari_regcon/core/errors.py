"""The one exception type a user sees: its message is a single clear sentence."""


class RegconError(Exception):
    """Bad input or a failed operation that the user can fix; ``str(err)`` is shown as is."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True for host or device out-of-memory (``torch.OutOfMemoryError`` is a ``RuntimeError``)."""
    if isinstance(exc, MemoryError):
        return True
    import torch  # lazy: this module stays importable without torch loaded
    oom = getattr(torch, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    # backends that still raise a plain RuntimeError (e.g. MPS) say so in the message
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()

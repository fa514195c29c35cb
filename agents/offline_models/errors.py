"""The one error the offline model builders raise."""


class OfflineModelError(RuntimeError):
    """An offline model cannot be built or found; the message says what to do about it."""

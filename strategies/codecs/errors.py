"""The one error every decoder and validator raises for an update it will not accept."""


class UpdateRejected(ValueError):
    """An encoded update failed validation; the message names the problem."""

"""The one error type of config validation."""


class SpecError(ValueError):
    """A config problem, reported as one line naming the config path."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path

"""The one error type of config validation, and every error that composing a config can raise."""

import yaml
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException


class SpecError(ValueError):
    """A config problem, reported as one line naming the config path."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path


# Composing and validating a config: a typo, a bad value, a YAML file that does not parse
# (``yaml.YAMLError`` names the file, line and column). Each is one line and exit code 2.
CONFIG_ERRORS = (SpecError, HydraException, OmegaConfBaseException, ValueError, yaml.YAMLError)

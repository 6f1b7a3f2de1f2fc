"""Exception types of ptycho: one per kind of failure a user must act on."""


class PtychoError(Exception):
    """Base class of every error ptycho raises on purpose."""


class ConfigError(PtychoError):
    """A `params.yaml` section (or a configuration argument) is invalid."""


class DataError(PtychoError):
    """A data file is missing, malformed or inconsistent. The message names file, key and problem."""


class BundleError(PtychoError):
    """A model bundle `wts.h5.zip` is missing, corrupt, foreign or inconsistent with the model."""


class TrainingError(PtychoError):
    """Training cannot go on or cannot start: a loss that is not finite (the message names the
    epoch), a checkpoint that belongs to another run, too few patterns to validate on."""


class TrainingWarning(UserWarning):
    """Training goes on, differently from what was asked: ``--resume`` found nothing to resume."""


class InputWarning(UserWarning):
    """An input file looks suspicious but can be read; the message says what to check or set."""

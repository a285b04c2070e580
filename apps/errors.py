"""The errors that are the user's to fix: a page, the API and the CLI show their message as it is (one
sentence that names what to change); anything else is a bug, logged with its traceback."""
from __future__ import annotations

from annotator.util import AnnotatorInputError
from annotator.weights import WeightFileError
from cldm.checkpoint import CheckpointError
from cldm.control_bank import ControlBankError
from cldm.pipeline import GenerationInputError
from weights.files import WeightsUnavailable


class InvalidInput(ValueError):
    """A value a user (or an API caller) sent that cannot be used; the message says which and why."""


USER_ERRORS: tuple[type[Exception], ...] = (InvalidInput, GenerationInputError, AnnotatorInputError, ControlBankError,
                                            CheckpointError, WeightsUnavailable, WeightFileError)

"""batch-predict: run object-detection models over very large image collections."""

from .errors import BatchPredictError, JobFailed, RecordFailure, SetupError
from .runners import run
from .outputs.sinks import JobSummary
from .spec import JobSpec

__all__ = ["BatchPredictError", "JobFailed", "JobSpec", "JobSummary", "RecordFailure", "SetupError", "run"]
__version__ = "0.1.0"

"""batch-predict: run object-detection models over very large image collections."""

from .runners.local import run
from .sinks import JobSummary
from .spec import JobSpec

__all__ = ["JobSpec", "JobSummary", "run"]
__version__ = "0.1.0"

"""The errors batch-predict raises on purpose, under one base, and the exit status each means.

Three kinds: a job that cannot run as asked (`SetupError`), a record that fails alone and
becomes an error line while the job goes on (`RecordFailure`), and a job that ran but did not
end as asked (`JobFailed`).
"""

from __future__ import annotations


class BatchPredictError(Exception):
    """An error batch-predict raises on purpose; its message says what is wrong and what to do."""


class SetupError(BatchPredictError):
    """The job cannot run as asked: a flag, the inputs, the model or the outputs are wrong."""


class RecordFailure(BatchPredictError):
    """One record cannot be read, decoded or predicted: the job writes it as an error line and goes on."""


class JobFailed(BatchPredictError):
    """The job ran, but did not end as asked: units left uncommitted, results that cannot be evaluated."""


EXIT_JOB_FAILED = 1
EXIT_BAD_SETUP = 2

#: The exit status of the `batch-predict` command for each kind of error, the first match winning.
EXIT_STATUS: tuple[tuple[type[BatchPredictError], int], ...] = (
    (SetupError, EXIT_BAD_SETUP),
    (JobFailed, EXIT_JOB_FAILED),
)


def exit_status(error: BatchPredictError) -> int:
    """The command's exit status for `error` (`EXIT_STATUS`); a job stopped by a signal exits 128 + its number."""
    return next((status for kind, status in EXIT_STATUS if isinstance(error, kind)), EXIT_JOB_FAILED)

"""`--metrics_port`: the job's counters as a Prometheus endpoint, for dashboards and alerts on long jobs.

Needs prometheus-client (`pip install 'batch-predict[metrics]'`). The metrics live in the
server's own registry, not the library's global one, so two jobs in one process do not
share counts. Names are listed in docs/tools.md.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..errors import SetupError
from ..models import Model
from .observers import JobObserver
from ..records import Outcome, Prediction, Record, FailedRecord
from ..outputs.sinks import UnitCounts
from ..inputs.units import Unit

#: Seconds; from a small batch on a GPU to a large one on a CPU.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class MetricsError(SetupError, OSError):
    """The metrics endpoint cannot be served (no prometheus-client, or the port is taken)."""


class MetricsServer(JobObserver):
    """Counts the run's events into Prometheus metrics and serves them over HTTP until `close`."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.registry = registry
        self._started = time.perf_counter()
        self._done = 0
        self._lock = threading.Lock()
        self.records_read = Counter("batch_predict_records_read", "Records read from the inputs, bad ones included.",
                                    registry=registry)
        self.predicted = Counter("batch_predict_records_predicted", "Records with a result line.", registry=registry)
        self.failed = Counter("batch_predict_records_failed", "Records with an error line, by error type.",
                              ["error_type"], registry=registry)
        self.detections = Counter("batch_predict_detections", "Detections in the result lines.", registry=registry)
        self.units_committed = Counter("batch_predict_units_committed", "Units committed by this run.",
                                       registry=registry)
        self.units = Gauge("batch_predict_units", "Units this run set out to do.", registry=registry)
        self.latency = Histogram("batch_predict_batch_latency_seconds", "Seconds per model call (one batch).",
                                 buckets=LATENCY_BUCKETS, registry=registry)
        Gauge("batch_predict_images_per_second", "Records predicted or failed per second since this run started.",
              registry=registry).set_function(self._rate)
        self._gpu_memory: Any = None
        self._server: Any = None

    @classmethod
    def start(cls, port: int, addr: str = "0.0.0.0") -> "MetricsServer":
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError:
            raise MetricsError("--metrics_port needs prometheus-client: pip install 'batch-predict[metrics]'") from None
        metrics = cls(CollectorRegistry())
        try:
            metrics._server, _ = start_http_server(port, addr=addr, registry=metrics.registry)
        except OSError as exc:
            raise MetricsError(f"--metrics_port: cannot serve on {addr}:{port}: {exc}") from None
        return metrics

    @property
    def port(self) -> int:
        return self._server.server_port

    def _rate(self) -> float:
        elapsed = time.perf_counter() - self._started
        return self._done / elapsed if elapsed > 0 else 0.0

    def job_started(self, units: Sequence[Unit]) -> None:
        self._started = time.perf_counter()
        self.units.set(len(units))

    def model_loaded(self, model: Model) -> None:
        # Only when the model put torch on a GPU: importing torch here would cost seconds for nothing.
        torch = sys.modules.get("torch")
        if self._gpu_memory is None and torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            from prometheus_client import Gauge

            self._gpu_memory = Gauge("batch_predict_gpu_memory_allocated_bytes",
                                     "torch.cuda.memory_allocated() of the current device.", registry=self.registry)
            self._gpu_memory.set_function(torch.cuda.memory_allocated)

    def record_read(self, unit: Unit, item: Record | FailedRecord) -> None:
        self.records_read.inc()

    def batch_predicted(self, size: int, seconds: float) -> None:
        self.latency.observe(seconds)

    def written(self, unit: Unit, outcomes: list[Outcome]) -> None:
        predictions = [o for o in outcomes if isinstance(o, Prediction)]
        self.predicted.inc(len(predictions))
        self.detections.inc(sum(len(p.detections.scores) for p in predictions))
        for o in outcomes:
            if isinstance(o, FailedRecord):
                self.failed.labels(o.error_type).inc()
        with self._lock:
            self._done += len(outcomes)

    def unit_committed(self, unit: Unit, counts: UnitCounts) -> None:
        self.units_committed.inc()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

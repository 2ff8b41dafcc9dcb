"""`--metrics_port`: the job's counters, scraped over loopback as Prometheus would."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from batch_predict.observe.metrics import MetricsError, MetricsServer
from batch_predict.runners.local import run

from conftest import photo_job
from toymodels import MeanColourModel


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_endpoint_counts_what_the_job_read_predicted_and_failed(tmp_path):
    seen_during: list[dict] = []
    metrics = MetricsServer.start(0, addr="127.0.0.1")

    def scrape_mid_job(records):
        if not seen_during:
            seen_during.append(scrape(metrics.port))

    try:
        summary = run(photo_job(tmp_path), model=MeanColourModel(on_predict=scrape_mid_job), observer=metrics)
        after = scrape(metrics.port)
    finally:
        metrics.close()
    assert seen_during[0][("batch_predict_records_read_total", ())] >= 1  # served while the job ran
    assert after[("batch_predict_records_read_total", ())] == summary.records_read == 13
    assert after[("batch_predict_records_predicted_total", ())] == summary.predicted == 11
    assert after[("batch_predict_records_failed_total", (("error_type", "ValueError"),))] == 1
    assert after[("batch_predict_records_failed_total", (("error_type", "ImageDecodeError"),))] == 1
    assert after[("batch_predict_detections_total", ())] == summary.detections
    assert after[("batch_predict_units_committed_total", ())] == after[("batch_predict_units", ())] == 2
    calls = after[("batch_predict_batch_latency_seconds_count", ())]
    assert calls >= 6 and after[("batch_predict_batch_latency_seconds_bucket", (("le", "+Inf"),))] == calls
    assert after[("batch_predict_images_per_second", ())] > 0
    # The test model runs on the CPU: no GPU memory to report.
    assert not any(name.startswith("batch_predict_gpu_memory") for name, _ in after)


def test_a_taken_port_fails_at_setup():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(MetricsError, match="cannot serve"):
            MetricsServer.start(taken.getsockname()[1], addr="127.0.0.1")


def test_the_cli_binds_the_address_it_is_given():
    from batch_predict.cli import run_watchers

    watchers = run_watchers(0, "127.0.0.1", 0)
    (server,) = [w for w in watchers.observers if isinstance(w, MetricsServer)]
    try:
        assert server._server.server_address[0] == "127.0.0.1" and server.port > 0
    finally:
        server.close()


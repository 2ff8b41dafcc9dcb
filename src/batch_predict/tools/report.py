"""`batch-predict report`: one self-contained HTML page about a finished job.

The page holds everything inline (CSS, SVG charts, JPEG thumbnails as data URIs), so it can be
mailed, attached to a ticket or opened from a bucket, with no network. It is built in one
pass over the result and error lines, keeping counts and a fixed-size random sample, so a job
of millions of records makes a page of the same size.
"""

from __future__ import annotations

import base64
import datetime
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from html import escape
from typing import Any

import fsspec
from PIL import Image

from . import svg
from .annotate import draw_detections, to_jpeg
from ..decode import open_image
from ..outputs.layout import OutputLayout
from ..outputs.reading import error_files, load_job_record, load_summary, read_errors, read_results, read_timeline, result_files
from ..records import Record
from ..spec import DEFAULT_MAX_RECORD_BYTES
from ..inputs.fetch import Fetch, fetch_one
from ..inputs.formats import guess_format, read_file
from ..inputs.sources import InputFile, expand_patterns

SCORE_BINS = 20
ERROR_EXAMPLES = 3
TOP_CLASSES = 25


@dataclass
class ReportData:
    """What the page shows, gathered from a job's outputs."""

    result_prefix: str
    summary: dict[str, Any] | None
    predicted: int = 0
    with_detections: int = 0
    detections: int = 0
    score_bins: list[int] = field(default_factory=lambda: [0] * SCORE_BINS)
    classes: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    error_types: Counter[str] = field(default_factory=Counter)
    error_examples: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    error_files_known: bool = True
    samples: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Sample:
    """One picture of the grid: the result line and its annotated thumbnail, or why there is none."""

    result: dict[str, Any]
    jpeg: bytes | None = None
    problem: str = ""


def collect(result_prefix: str, error_prefix: str | None = None, num_samples: int = 12, seed: int = 0) -> ReportData:
    """Read a job's outputs once: counts, score and class tallies, error examples, a sample of results.

    The sample is drawn at random (seeded, so a page is reproducible) from the results with
    detections, topped up from those without. Raises `JobOutputsError` when the prefix holds no job.
    """
    summary = load_summary(result_prefix)
    data = ReportData(result_prefix, summary, timeline=read_timeline(result_prefix))
    rng = random.Random(seed)
    with_found: list[dict[str, Any]] = []
    without: list[dict[str, Any]] = []
    for line in read_results(result_files(result_prefix, summary)):
        data.predicted += 1
        found = line.get("detections", [])
        data.detections += len(found)
        for d in found:
            data.score_bins[min(int(d["score"] * SCORE_BINS), SCORE_BINS - 1)] += 1
            data.classes[str(d.get("label", d.get("class_id")))] += 1
        if found:
            data.with_detections += 1
        _reservoir(with_found if found else without, line, num_samples, data.with_detections if found
                   else data.predicted - data.with_detections, rng)
    data.samples = (with_found + without)[:num_samples]
    data.error_files_known = bool(error_prefix) or (summary or {}).get("error_files") is not None
    for error in read_errors(error_files(error_prefix, summary)):
        data.failed += 1
        data.error_types[error["error_type"]] += 1
        if len(data.error_examples[error["error_type"]]) < ERROR_EXAMPLES:
            data.error_examples[error["error_type"]].append(error)
    return data


def _reservoir(kept: list, item: Any, size: int, seen: int, rng: random.Random) -> None:
    """Keep a uniform sample of `size` items of a stream; `seen` counts this item."""
    if len(kept) < size:
        kept.append(item)
    elif (slot := rng.randrange(seen)) < size:
        kept[slot] = item


def load_samples(results: Iterable[dict[str, Any]], input_format: str | None = None,
                 width: int = 480) -> list[Sample]:
    """Each result's image, read back from its source file and record index, with its detections drawn.

    Each source file is read once, up to the last record wanted. An image that cannot be
    read back (the file moved, or no longer holds that record) gets a `problem` instead.
    """
    samples = [Sample(r) for r in results]
    by_source: dict[str, dict[int, Sample]] = defaultdict(dict)
    for sample in samples:
        by_source[sample.result["source"]][sample.result["record_index"]] = sample
    for source, wanted in by_source.items():
        last = max(wanted)
        try:
            (file,) = expand_patterns([source])
            for item in read_file(file, input_format or sniff_format(file)):
                if item.index in wanted and isinstance(item, Fetch):
                    item = fetch_one(item, DEFAULT_MAX_RECORD_BYTES)
                if item.index in wanted and isinstance(item, Record):
                    _draw(wanted[item.index], item, width)
                if item.index >= last:
                    break
        except (OSError, ValueError) as exc:
            for sample in wanted.values():
                sample.problem = sample.problem or f"cannot read {source}: {exc}"
        for sample in wanted.values():
            if sample.jpeg is None and not sample.problem:
                sample.problem = f"record {sample.result['record_index']} not found in {source}"
    return samples


def _draw(sample: Sample, record: Record, width: int) -> None:
    if record.key != sample.result["key"]:
        sample.problem = f"the source holds {record.key!r} there now, not {sample.result['key']!r}"
        return
    try:
        image = Image.fromarray(record.array) if record.array is not None else open_image(record.encoded or b"")
        sample.jpeg = to_jpeg(draw_detections(image, sample.result.get("detections", []), width))
    except (OSError, ValueError) as exc:
        sample.problem = f"cannot decode the image: {exc}"


def _job_input_format(result_prefix: str) -> str | None:
    """The `--input_file_format` the job recorded in its job.json, if it can be read."""
    try:
        record = load_job_record(result_prefix)
    except (OSError, ValueError):
        return None
    return (record or {}).get("settings", {}).get("input_file_format")


def sniff_format(file: InputFile) -> str:
    """The `--input_file_format` of a source file, from its name and first bytes (`guess_format`)."""
    with file.fs.open(file.path, "rb") as f:
        head = f.read(64)
    found = guess_format(file.path, head)
    if found is None:
        raise ValueError(f"cannot tell the input format of {file.url}; give it with --input_file_format")
    return found


def throughput(timeline: list[dict[str, Any]], buckets: int = 0) -> tuple[list[float], list[float]]:
    """(bucket end times, records per second in each bucket) from the timeline's batch lines.

    By default about three batches fall in a bucket (at most 60 buckets): fewer would show
    the batching itself as a saw-tooth rather than the rate.
    """
    if not timeline:
        return [], []
    buckets = buckets or min(60, max(1, len(timeline) // 3))
    end = max(float(line["t"]) for line in timeline) or 1.0
    width = end / buckets
    counts = [0.0] * buckets
    for line in timeline:
        counts[min(int(float(line["t"]) / width), buckets - 1)] += line.get("predicted", 0) + line.get("failed", 0)
    return [width * (i + 1) for i in range(buckets)], [c / width for c in counts]


def render(data: ReportData, samples: list[Sample]) -> str:
    """The page."""
    summary = data.summary or {}
    read = summary.get("records_read", data.predicted + data.failed)
    cards = [
        ("records read", f"{read:,}"),
        ("predicted", f"{data.predicted:,}"),
        ("failed", f"{data.failed:,}" + (f" ({data.failed / read:.1%})" if read else "")),
        ("detections", f"{data.detections:,}"),
        ("images with detections", f"{data.with_detections:,}"),
        ("detections per image", f"{data.detections / data.predicted:.2f}" if data.predicted else "–"),
    ]
    if summary:
        cards += [("input files", f"{summary.get('files', 0):,}"), ("wall time", f"{summary.get('wall_time_s', 0):.1f} s"),
                  ("images per second", f"{summary.get('images_per_second', 0):.1f}")]
    evaluation = summary.get("evaluation")
    if evaluation:
        cards += [("mAP", _score(evaluation.get("mAP"))), ("mAP@0.5", _score(evaluation.get("mAP_50")))]
    sections = [
        _section("Summary", '<div class="cards">' + "".join(
            f'<div class="card"><div class="value">{escape(v)}</div><div class="name">{escape(k)}</div></div>'
            for k, v in cards) + "</div>" + ("" if data.summary else
            '<p class="note">No summary file: the job did not finish; counts come from the lines written.</p>')),
        _section("Throughput", _throughput_panel(data, summary)),
        _section("Scores", svg.column_chart(data.score_bins, [i / SCORE_BINS for i in range(SCORE_BINS + 1)],
                                            title="detections by score") + _note_empty(data.detections, "detections")),
        _section("Classes", _classes_panel(data.classes)),
    ]
    if evaluation:
        sections.append(_section("Evaluation", _evaluation_panel(evaluation)))
    sections += [_section("Errors", _errors_panel(data)), _section("Samples", _samples_panel(samples))]
    generated = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return _PAGE.format(title=escape(f"batch-predict report: {data.result_prefix}"),
                        prefix=escape(data.result_prefix), generated=escape(generated), css=_CSS,
                        body="\n".join(sections))


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _section(title: str, body: str) -> str:
    return f'<section id="{title.lower()}"><h2>{escape(title)}</h2>{body}</section>'


def _note_empty(count: int, what: str) -> str:
    return f'<p class="note">No {what}.</p>' if not count else ""


def _throughput_panel(data: ReportData, summary: dict[str, Any]) -> str:
    xs, ys = throughput(data.timeline)
    if xs:
        mean = sum(ys) / len(ys)  # buckets are of equal width
        return (svg.line_chart(xs, ys, title="records per second", x_label="seconds since the job started", mean=mean)
                + f'<p class="note">Records per second over the job, from its timeline; dashed: the average, '
                  f"{mean:.1f} records/s.</p>")
    if summary.get("wall_time_s"):
        return (f'<p class="note">The job read {summary.get("records_read", 0):,} records in '
                f'{summary["wall_time_s"]:.1f} s: {summary.get("images_per_second", 0):.1f} images/s on average. '
                f"It wrote no timeline ({escape(OutputLayout(data.result_prefix).timeline)}), so there is no plot over time.</p>")
    return '<p class="note">No timing: the job wrote neither a summary nor a timeline.</p>'


def _classes_panel(classes: Counter[str]) -> str:
    if not classes:
        return _note_empty(0, "detections")
    top = classes.most_common(TOP_CLASSES)
    rest = len(classes) - len(top)
    return (svg.bar_chart(top, title="detections per class")
            + (f'<p class="note">and {rest} more classes with {sum(classes.values()) - sum(v for _, v in top):,} '
               "detections.</p>" if rest else ""))


def _evaluation_panel(evaluation: dict[str, Any]) -> str:
    rows = sorted(evaluation.get("per_class_AP", {}).items(), key=lambda item: (-item[1], item[0]))
    table = "".join(f"<tr><td>{escape(name)}</td><td class=num>{ap:.3f}</td></tr>" for name, ap in rows)
    return (f'<p class="note">Against {escape(str(evaluation.get("ground_truth")))}: {evaluation.get("images", 0)} images '
            f'scored, {evaluation.get("results_without_ground_truth", 0)} results without ground truth, '
            f'{evaluation.get("ground_truth_images_without_results", 0)} ground-truth images without results.</p>'
            f"<table><tr><th>class</th><th>AP</th></tr>{table}</table>")


def _errors_panel(data: ReportData) -> str:
    if not data.error_files_known:
        return '<p class="note">Error files unknown: no summary; give --output_error_prefix.</p>'
    if not data.failed:
        return '<p class="note">No record failed.</p>'
    rows = []
    for error_type, count in data.error_types.most_common():
        examples = "".join(
            f'<div class="example"><code>{escape(str(e.get("key")))}</code> '
            f'<span class="where">{escape(str(e.get("source")))} #{e.get("record_index")} ({escape(str(e.get("stage", "")))})'
            f'</span><br>{escape(str(e.get("message")))}</div>'
            for e in data.error_examples[error_type])
        rows.append(f"<tr><td><b>{escape(error_type)}</b></td><td class=num>{count:,}</td><td>{examples}</td></tr>")
    return f"<table><tr><th>error type</th><th>count</th><th>examples</th></tr>{''.join(rows)}</table>"


def _samples_panel(samples: list[Sample]) -> str:
    if not samples:
        return '<p class="note">No results.</p>'
    cards = []
    for sample in samples:
        found = sample.result.get("detections", [])
        labels = Counter(str(d.get("label", d.get("class_id"))) for d in found)
        caption = ", ".join(f"{n} {name}" for name, n in labels.most_common(4)) or "nothing found"
        picture = (f'<img src="data:image/jpeg;base64,{base64.b64encode(sample.jpeg).decode()}" '
                   f'alt="{escape(str(sample.result["key"]))}">' if sample.jpeg
                   else f'<div class="missing">{escape(sample.problem)}</div>')
        cards.append(f'<figure>{picture}<figcaption><code>{escape(str(sample.result["key"]))}</code><br>'
                     f"{escape(caption)}</figcaption></figure>")
    return f'<div class="grid">{"".join(cards)}</div>'


def write_report(result_prefix: str, output: str | None = None, *, error_prefix: str | None = None,
                 num_samples: int = 12, input_format: str | None = None) -> str:
    """Build the page for the job under `result_prefix` and write it (default `<prefix>-report.html`)."""
    data = collect(result_prefix, error_prefix, num_samples)
    page = render(data, load_samples(data.samples, input_format or _job_input_format(result_prefix)))
    output = output or OutputLayout(result_prefix).report
    with fsspec.open(output, "wt", encoding="utf-8") as f:
        f.write(page)
    return output


_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0; background: #f5f6f8; }
header { background: #1f2d3d; color: #fff; padding: 16px 28px; }
header h1 { margin: 0; font-size: 20px; } header .sub { color: #b8c4d0; font-size: 12px; word-break: break-all; }
main { max-width: 1200px; margin: 0 auto; padding: 8px 28px 40px; display: grid;
       grid-template-columns: repeat(auto-fit, minmax(540px, 1fr)); gap: 0 24px; }
section { background: #fff; border-radius: 8px; padding: 4px 18px 14px; margin-top: 18px;
          box-shadow: 0 1px 2px rgba(0,0,0,.08); overflow-x: auto; }
#summary, #errors, #samples { grid-column: 1 / -1; }
h2 { font-size: 16px; margin: 12px 0 10px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { background: #f0f3f7; border-radius: 6px; padding: 8px 14px; min-width: 110px; }
.card .value { font-size: 20px; font-weight: 600; } .card .name { color: #667; font-size: 12px; }
.note { color: #555; font-size: 13px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #e4e7eb; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; width: 5em; }
.example { margin-bottom: 6px; word-break: break-word; } .where { color: #777; font-size: 12px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 14px; }
figure { margin: 0; background: #f0f3f7; border-radius: 6px; overflow: hidden; }
figure img { display: block; width: 100%; height: auto; }
figcaption { padding: 6px 8px; font-size: 12px; word-break: break-all; }
.missing { padding: 40px 12px; color: #a33; font-size: 12px; text-align: center; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{css}</style></head>
<body><header><h1>batch-predict report</h1><div class="sub">{prefix} &middot; generated {generated}</div></header>
<main>
{body}
</main></body></html>
"""

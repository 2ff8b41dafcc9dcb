"""Print where a finished job put its results, errors and summary, and a few of its results.

    python -m demo.show_results --output_result_prefix demo-out/predictions
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from batch_predict.outputs.layout import OutputLayout


def describe_result(line: str, max_detections: int) -> str:
    """One result line, shortened to its key and its best detections."""
    result = json.loads(line)
    found = [
        f"{d.get('label', d['class_id'])} {d['score']:.2f} at [{', '.join(f'{v:.0f}' for v in d['box'])}]"
        for d in result["detections"][:max_detections]
    ]
    more = len(result["detections"]) - len(found)
    listing = "; ".join(found) + (f"; and {more} more" if more > 0 else "") if found else "nothing found"
    return f"  {result['key']} ({result['width']}x{result['height']}): {listing}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_result_prefix", required=True)
    parser.add_argument("--lines", type=int, default=5, help="How many result lines to show.")
    args = parser.parse_args()
    summary_file = OutputLayout(args.output_result_prefix).summary
    summary = json.loads(Path(summary_file).read_text())
    print(f"\nRecords read {summary['records_read']}: predicted {summary['predicted']}, failed {summary['failed']}; "
          f"{summary['detections']} detections.")
    print(f"Results: {', '.join(summary['result_files'])}")
    print(f"Errors:  {', '.join(summary['error_files'])}")
    print(f"Summary: {summary_file}")
    print(f"\nFirst {args.lines} results (boxes are [xmin, ymin, xmax, ymax] pixels of the original image):")
    with open(summary["result_files"][0], encoding="utf-8") as results:
        for line in itertools.islice(results, args.lines):
            print(describe_result(line, max_detections=4))
    print("\nErrors:")
    for error_file in summary["error_files"]:
        with open(error_file, encoding="utf-8") as errors:
            for line in errors:
                error = json.loads(line)
                print(f"  {error['key']} (record {error['record_index']} of {error['source']}): "
                      f"{error['error_type']}: {error['message']}")


if __name__ == "__main__":
    main()

"""What opening the GPU through the CUDA driver while PyTorch imports (`models.cuda_driver`)
saves: PyTorch imported and its CUDA context opened, each way in fresh processes, alternating.

    PYTHONPATH=src python benchmarks/cuda_open.py --runs 3 --out cuda_open.json

`after` is what a job did before: `import torch`, then the context opened by PyTorch's first
tensor on the GPU. `beside` opens the device's primary context through the driver on a thread
first, then does the same; PyTorch finds the context open.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, sys, time
started = time.perf_counter()
from batch_predict.models import separate_cuda_queues
from batch_predict.models.cuda_driver import PrimaryContext
separate_cuda_queues()
context = PrimaryContext(0) if sys.argv[1] == "beside" else None
imported = time.perf_counter()
import torch
from batch_predict.models.tensor_model import open_device
imported = time.perf_counter() - imported
opened = time.perf_counter()
open_device(torch.device("cuda"))
torch.cuda.synchronize()
if context is not None:
    context.hand_over()
opened = time.perf_counter() - opened
torch.ones(1, device="cuda").add_(1).item()  # the context still works once handed over
print(json.dumps({"import_torch_s": round(imported, 3), "open_after_import_s": round(opened, 3),
                  "total_s": round(time.perf_counter() - started, 3)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results: dict[str, list] = {"after": [], "beside": []}
    for _ in range(args.runs):
        for way, runs in results.items():
            done = subprocess.run([sys.executable, "-c", CHILD, way], capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.splitlines()[-1]))
            print(way, runs[-1], flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

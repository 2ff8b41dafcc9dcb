"""How long a model's first call at each new batch size takes, against the next call at it.

On a GPU a new input shape makes cuDNN choose and build a plan for every convolution; the job
pads a short batch to a size it already ran rather than pay that (`PaddingRunner`).

    PYTHONPATH=src python benchmarks/first_calls.py --yolox .bench/yolox_nano_torchscript.pt \\
        --spec .bench/yolox_nano.yaml --sizes 256,256,64,64,128
"""

from __future__ import annotations

import argparse
import time

import torch

from batch_predict.models import load_model
from batch_predict.spec import ModelSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--yolox", required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--sizes", default="256,256,64,64,128")
    parser.add_argument("--input_size", type=int, default=416)
    args = parser.parse_args()
    model = load_model(ModelSettings(model_dir=args.yolox, model_spec=args.spec, device="cuda", precision="fp16",
                                     batch_size=max(map(int, args.sizes.split(",")))))
    network = model._runner.inner  # the call itself, without the padding to sizes already run
    for size in map(int, args.sizes.split(",")):
        batch = torch.zeros((size, 3, args.input_size, args.input_size), dtype=torch.float16, device="cuda")
        torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.inference_mode():
            network(batch)
        torch.cuda.synchronize()
        print(f"call at {size}: {time.perf_counter() - started:.3f} s", flush=True)


if __name__ == "__main__":
    main()

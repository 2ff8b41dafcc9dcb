"""Whether the job's GPU JPEG decode can overwrite memory that kernels queued on the caller's
stream have yet to read (pytorch/vision#9606), with torchvision's call as is and as the job makes it.

Each round fills blocks the size of a decoded image, queues a kernel that keeps the GPU busy for a
while and, behind it, a sum of each block; frees the blocks while the sums are still queued, then
decodes a batch of JPEGs, whose outputs the caching allocator may take from those blocks. A sum
that comes out wrong read the decoder's pixels:

    PYTHONPATH=src:benchmarks python benchmarks/decode_race.py --photo ../shared/data/photos/bus.jpg --out "$OUT"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from batch_predict.models import vision_ops
from batch_predict.models.device_decode import as_tensor


def wrong_sums(decode, jpegs: list[bytes], device: torch.device, rounds: int) -> int:
    """How many queued sums, over `rounds`, read other than what their blocks held when queued."""
    size = vision_ops.decode_jpegs_on(device, [as_tensor(jpegs[0])])[0].numel()  # a block the size of an output
    wrong = 0
    for _ in range(rounds):
        blocks = [torch.ones(size, dtype=torch.uint8, device=device) for _ in jpegs]
        torch.cuda.synchronize(device)
        torch.cuda._sleep(50_000_000)  # about 25 ms of a GPU's clock: the sums wait behind it
        sums = [block.sum() for block in blocks]
        del blocks
        decode(device, [as_tensor(j) for j in jpegs])
        torch.cuda.synchronize(device)
        wrong += sum(int(s) != size for s in sums)
    return wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", type=Path, required=True, help="a JPEG")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    device = torch.device("cuda")
    jpegs = [args.photo.read_bytes()] * args.batch
    as_is = lambda on, data: torch.ops.image.decode_jpegs_cuda(data, vision_ops._RGB, on)  # noqa: E731
    found = {"rounds": args.rounds, "sums_per_round": args.batch,
             "wrong_sums_torchvision_as_is": wrong_sums(as_is, jpegs, device, args.rounds),
             "wrong_sums_as_the_job_decodes": wrong_sums(vision_ops.decode_jpegs_on, jpegs, device, args.rounds)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_race.json").write_text(json.dumps(found, indent=1))
    print(found)


if __name__ == "__main__":
    main()

"""How to spend a machine's cores on one training run: threads in one process, or DDP processes.

    python benchmarks/bench_training_processes.py               # about 2 minutes on 2 cores
    python benchmarks/bench_training_processes.py --cores 2 --steps 8

One demo-size training step (a 128-row CVR batch with 5 behaviour items + 128 items as 384
alignment rows, the shapes of benchmarks/bench_training_step.py) on the same global batch:

- 1 process with ``--cores`` torch threads (training.num_processes: 1, the demo default);
- ``--cores`` DDP processes (gloo, as TorchDistributor runs them) with 1 thread each, each
  taking its share of the batch, gradients averaged by all-reduce every step.

Each layout's time is the median step after a warm-up step; the ratio is measured in the
same run (the machines are shared and noisy). The processes are plain torch.multiprocessing
workers with the environment TorchDistributor would give them (RANK, WORLD_SIZE, a local
rendezvous), so Spark's start-up is not in the number.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training_step import DEMO, random_items  # noqa: E402

from camenn.model import CameNN, CameNNBatch, frame_config  # noqa: E402
from camenn.training import _MixedStep  # noqa: E402


def demo_model(behaviour: int, text_tokens: int) -> CameNN:
    torch.manual_seed(0)
    cfg = frame_config("camenn", n_experts=4, max_behaviour=behaviour, max_text_tokens=text_tokens,
                       item_feature_sizes={"category": 31, "price_bucket": 12},
                       user_feature_sizes={"age_band": 6, "household": 6, "zone": 9}, **DEMO)
    return CameNN(cfg).train()


def batches(model: CameNN, rows: int, behaviour: int, text_tokens: int, seed: int):
    cfg, gen = model.cfg, torch.Generator().manual_seed(seed)
    full = CameNNBatch(random_items((rows,), text_tokens, cfg, gen), random_items((rows, behaviour), text_tokens, cfg, gen),
                       None, torch.ones(rows, 3, dtype=torch.long))
    align = CameNNBatch(random_items((3 * rows,), text_tokens, cfg, gen))
    return full, align


def timed_steps(step_module, opt, full, align, steps: int) -> list[float]:
    times = []
    for _ in range(steps + 1):  # the first step warms up allocators and kernels
        t0 = time.perf_counter()
        out_full, out_align = step_module(full, align)
        loss = out_full["cvr"].sum() + out_align["ita"].sum() + out_align["tia"].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times[1:]


def _worker(rank: int, world: int, port: int, args, queue) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = demo_model(args.behaviour, args.text_tokens)
        ddp = DDP(_MixedStep(model))  # as train_fn wraps it: both passes in one call, every parameter used
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        rows = -(-args.batch // world)
        full, align = batches(model, rows, args.behaviour, args.text_tokens, seed=rank)
        queue.put((rank, timed_steps(ddp, opt, full, align, args.steps)))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2, help="threads of the one process = number of DDP processes")
    parser.add_argument("--batch", type=int, default=128, help="global CVR rows per step (as many alignment items)")
    parser.add_argument("--behaviour", type=int, default=5)
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.cores)
    model = demo_model(args.behaviour, args.text_tokens)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    full, align = batches(model, args.batch, args.behaviour, args.text_tokens, seed=0)
    one = statistics.median(timed_steps(_MixedStep(model), opt, full, align, args.steps))

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, args.cores, port, args, queue)) for r in range(args.cores)]
    for p in procs:
        p.start()
    per_rank = dict(queue.get() for _ in procs)
    for p in procs:
        p.join()
    # a DDP step ends when the slowest rank's all-reduce does, so the step time is the max over ranks
    ddp = statistics.median(max(ts) for ts in zip(*per_rank.values()))

    print(f"global batch {args.batch} CVR rows + {args.batch} alignment items, {args.cores} cores, median of {args.steps} steps")
    print(f"{'layout':<44}{'step s':>8}{'x first':>9}")
    print(f"{f'1 process x {args.cores} threads':<44}{one:>8.3f}{1.0:>9.2f}")
    print(f"{f'{args.cores} DDP processes (gloo) x 1 thread':<44}{ddp:>8.3f}{ddp / one:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train-step speed and peak memory of LWTA vs ReLU in a CIFAR-stem ResNet-18.

Three variants of the same network (``lwtakit.models.resnet18``, stem "cifar"):
  relu   : nn.ReLU at every activation site,
  naive  : the straightforward LWTA (reshape to blocks, ``F.gumbel_softmax(hard=True)``, multiply),
  lwta   : ``lwtakit.lwta.LWTA`` (fused straight-through autograd Function).
A step = forward + cross-entropy + backward + SGD step on a random batch.

Time: the variants run round-robin in one process (warm-up steps first), median per variant.
Memory: the training-step peak is dominated by the activations autograd saves for backward, so we
count them exactly: one training forward under ``torch.autograd.graph.saved_tensors_hooks`` records
every saved tensor's storage; distinct storages (a tensor saved by two ops counts once, parameters
excluded) are summed. Process RSS peaks were tried first and are not usable here: on this CPU the
allocator's transient workspace made all variants read the same peak. The "+state" column adds
parameters, gradients and SGD momentum (3 x parameter bytes): an estimate of the step's peak without
transient workspace.

On CUDA the "GPU ms" column adds the summed kernel time of a step (torch.profiler): where the step
time is larger, the GPU waits for the host (Python and launch overhead), not for kernels.
``--cuda-graphs`` captures every variant's forward and backward with ``torch.cuda.make_graphed_callables``
(the optimizer step stays eager), which removes that host overhead for all of them alike.

Prints ratios measured in this run; never passes or fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lwtakit.lwta import LWTA  # noqa: E402
from lwtakit.models.options import ArchOptions  # noqa: E402
from lwtakit.models.resnet import resnet18  # noqa: E402


class NaiveLWTA(nn.Module):
    """The straightforward formulation: blocks of U channels, Gumbel-softmax with a hard ST mask."""

    def __init__(self, U: int = 2, temperature: float = 1.0):
        super().__init__()
        self.U, self.T = U, temperature

    def forward(self, x):
        B, C, H, W = x.shape
        logits = x.view(B, C // self.U, self.U, H, W).permute(0, 1, 3, 4, 2)
        mask = F.gumbel_softmax(logits, tau=self.T, hard=True, dim=-1)
        return x * mask.permute(0, 1, 4, 2, 3).reshape(B, C, H, W)


def build(variant: str, width: float, U: int) -> nn.Module:
    if variant == "relu":
        act = lambda c: nn.ReLU()  # noqa: E731
    elif variant == "naive":
        act = lambda c: NaiveLWTA(U)  # noqa: E731
    else:
        act = lambda c: LWTA(U)  # noqa: E731
    return resnet18(num_classes=10, act_layer=act, arch=ArchOptions(width=width, stem="cifar"),
                    channel_multiple=U)


def make_step(model, batch, device, cuda_graphs: bool = False):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if cuda_graphs:
        model = torch.cuda.make_graphed_callables(model, (x,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return step


def gpu_kernel_seconds(step, n: int = 3) -> float:
    """Mean summed CUDA kernel time of one step over ``n`` profiled steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(e.device_time for e in kernels) / n / 1e6


def saved_bytes(model: nn.Module, batch: int, device: str) -> int:
    """Bytes of distinct tensor storages autograd keeps for backward during one training forward."""
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    x = torch.rand(batch, 3, 32, 32, device=device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).sum()
    del loss
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--U", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--variants", default="relu,naive,lwta")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--cuda-graphs", action="store_true", help="capture forward + backward in CUDA graphs")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    torch.manual_seed(0)
    steps = {v: make_step(build(v, args.width, args.U).to(args.device).train(), args.batch, args.device,
                          args.cuda_graphs) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.warmup):
        for v in variants:
            steps[v]()
    for _ in range(args.steps):
        for v in variants:  # round-robin so that load changes hit every variant alike
            t = time.perf_counter()
            steps[v]()
            times[v].append(time.perf_counter() - t)
    med = {v: statistics.median(ts) for v, ts in times.items()}
    gpu = {v: gpu_kernel_seconds(steps[v]) for v in variants} if args.device.startswith("cuda") else {}
    mem: dict[str, int] = {}
    state: dict[str, int] = {}
    if not args.no_memory:
        for v in variants:
            model = build(v, args.width, args.U).to(args.device).train()
            # + parameters, their gradients and SGD momentum: the rest of what a step holds at its peak
            state[v] = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
            mem[v] = saved_bytes(model, args.batch, args.device)
    ref = "relu" if "relu" in variants else variants[0]
    how = "bytes saved for backward by one forward (distinct storages, parameters excluded)"
    graphs = ", CUDA graphs" if args.cuda_graphs else ""
    print(f"ResNet-18 CIFAR stem, batch {args.batch}, width {args.width}, U={args.U}, device {args.device}{graphs}, "
          f"threads {torch.get_num_threads()}, {args.steps} timed steps (median), memory: {how}")
    mem_head = f" {'saved MiB':>9s} {'x ' + ref:>8s} {'+state MiB':>10s} {'x ' + ref:>8s}" if mem else ""
    gpu_head = f" {'GPU ms':>8s} {'x ' + ref:>8s}" if gpu else ""
    print(f"{'variant':8s} {'step s':>8s} {'x ' + ref:>8s}{mem_head}{gpu_head}")
    for v in variants:
        m = mem.get(v)
        if m is None:
            mstr = ""
        else:
            tot, tref = m + state[v], mem[ref] + state[ref]
            mstr = f" {m / 2**20:9.0f} {m / mem[ref]:8.2f} {tot / 2**20:10.0f} {tot / tref:8.2f}"
        gstr = f" {gpu[v] * 1e3:8.2f} {gpu[v] / gpu[ref]:8.2f}" if gpu else ""
        print(f"{v:8s} {med[v]:8.3f} {med[v] / med[ref]:8.2f}{mstr}{gstr}")
    if "lwta" in med and "relu" in med:
        print(f"lwta/relu step time: {med['lwta'] / med['relu']:.2f}")


if __name__ == "__main__":
    main()

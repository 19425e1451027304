"""Train-step speed and peak memory of LWTA vs ReLU in a CIFAR-stem ResNet-18.

Three variants of the same network (``lwtakit.models.resnet18``, stem "cifar"):
  relu   : nn.ReLU at every activation site,
  naive  : the straightforward LWTA (reshape to blocks, ``F.gumbel_softmax(hard=True)``, multiply),
  lwta   : ``lwtakit.lwta.LWTA`` (fused straight-through autograd Function).
A step = forward + cross-entropy + backward + SGD step on a random batch.

Time: the variants run round-robin in one process (warm-up steps first), median per variant; ``--repeats R``
times R independent blocks of ``--steps`` steps and prints the median of the R ratios and their spread.

``--path`` picks what a step runs:
  layer  : the network eager, each LWTA layer on its own kernels (CPU: the fused torch.compile'd kernels for
           inputs of >= 2**18 elements; CUDA: Triton); the ``naive`` variant is only measured here,
  train  : exactly the step ``train.py`` takes: the network built from the config by ``LitClassifier`` (model.act
           = relu / lwta, ``--width``, U) and its training forward on the path ``trainer.compile`` resolves to on
           this device (``--compile``, default auto: ``torch.compile(mode="reduce-overhead")`` on CUDA, eager
           elsewhere; :mod:`lwtakit.fast_path`).
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

from lwtakit.fast_path import plan_compile, triton_available  # noqa: E402
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


def build_train(variant: str, args) -> tuple[nn.Module, object, str]:
    """(parameters' owner, training forward, path description) of ``LitClassifier`` as ``train.py`` builds it."""
    from lightning_modules.classifier import LitClassifier
    from lwtakit import config as config_lib

    act = "relu" if variant == "relu" else "lwta"
    cfg = config_lib.load_config("default", [f"model.act={act}", f"model.width={args.width}", f"model.U={args.U}",
                                             "model.stem=cifar", f"trainer.compile={args.compile}"])
    module = LitClassifier(cfg, num_classes=10, in_chans=3, mean=[0.5] * 3, std=[0.25] * 3).to(args.device).train()
    module.configure_model()
    dev = torch.device(args.device).type
    plan = plan_compile(args.compile, dev, dev == "cuda" and triton_available())
    how = f"torch.compile(mode={plan.mode or 'default'})" if plan.compile else "eager"
    return module.model, module._train_forward, f"train.py's step, trainer.compile={args.compile} -> {how}"


def make_step(model, forward, batch, device, cuda_graphs: bool = False):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if cuda_graphs:
        forward = torch.cuda.make_graphed_callables(model, (x,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(x), y)
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


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant and repeat")
    ap.add_argument("--repeats", type=int, default=3, help="independent timing blocks; median and spread of ratios")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--U", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--variants", default="relu,naive,lwta")
    ap.add_argument("--path", choices=("layer", "train"), default="layer", help="what a step runs (see above)")
    ap.add_argument("--compile", default="auto", help="--path train: trainer.compile (auto | true | false)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--cuda-graphs", action="store_true", help="--path layer: capture fwd + bwd in CUDA graphs")
    args = ap.parse_args(argv)
    args.compile = {"true": True, "false": False}.get(args.compile.lower(), args.compile)
    if args.path == "train":
        args.variants = ",".join(v for v in args.variants.split(",") if v != "naive")  # no such config
        if args.cuda_graphs:
            ap.error("--cuda-graphs is for --path layer; --path train captures graphs itself under compile auto")
    return args


def time_steps(steps: dict, args) -> list[dict[str, float]]:
    """Median step seconds per variant for each of ``args.repeats`` blocks (variants round-robin)."""
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    blocks = []
    for _ in range(args.repeats):
        times: dict[str, list[float]] = {v: [] for v in steps}
        for _ in range(args.steps):
            for v, step in steps.items():  # round-robin so that load changes hit every variant alike
                t = time.perf_counter()
                step()
                times[v].append(time.perf_counter() - t)
        blocks.append({v: statistics.median(ts) for v, ts in times.items()})
    return blocks


def main(argv=None) -> None:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    torch.manual_seed(0)
    steps, path = {}, ""
    for v in variants:
        if args.path == "train":
            model, forward, path = build_train(v, args)
        else:
            model = build(v, args.width, args.U).to(args.device).train()
            forward, path = model, "eager network, LWTA layers on their own kernels" + (
                ", CUDA graphs" if args.cuda_graphs else "")
        steps[v] = make_step(model, forward, args.batch, args.device, args.cuda_graphs)
    blocks = time_steps(steps, args)
    med = {v: statistics.median(b[v] for b in blocks) for v in variants}
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
    ratio = {v: statistics.median(b[v] / b[ref] for b in blocks) for v in variants}  # same estimator as below
    report(args, variants, med, ratio, mem, state, gpu, path)
    if "lwta" in variants and "relu" in variants:
        ratios = sorted(b["lwta"] / b["relu"] for b in blocks)
        print(f"lwta/relu step time: {statistics.median(ratios):.2f} (median of {args.repeats} repeats of "
              f"{args.steps} steps; repeats {', '.join(f'{r:.2f}' for r in ratios)}; spread "
              f"{ratios[-1] - ratios[0]:.2f}); relu step {med['relu']:.3f} s; path: {path}")


def report(args, variants, med, ratio, mem, state, gpu, path) -> None:
    ref = "relu" if "relu" in variants else variants[0]
    how = "bytes saved for backward by one forward (distinct storages, parameters excluded)"
    print(f"ResNet-18 CIFAR stem, batch {args.batch}, width {args.width}, U={args.U}, device {args.device}, "
          f"threads {torch.get_num_threads()}, path: {path}; step: median over {args.repeats} repeats of the "
          f"median of {args.steps} timed steps, x {ref}: median of the repeats' ratios; memory: {how}")
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
        print(f"{v:8s} {med[v]:8.3f} {ratio[v]:8.2f}{mstr}{gstr}")


if __name__ == "__main__":
    main()

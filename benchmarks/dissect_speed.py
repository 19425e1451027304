"""Dissection speed benchmarks: print ratios measured in one run (never pass/fail).

Parts (``--part``, repeatable; default all):

* ``recording``: time of :func:`lwtakit.recording.record_activations` over a probe set / time of bare
  forward passes over the same probe set (same loader, same batches). Target <= 1.2.
* ``auc``: per-concept loop with ``torchmetrics.functional.binary_auroc`` (the INVERT reference's
  formulation) / vectorised :func:`lwtakit.labelers.invert.auc_matrix` for all units x concepts.
  The loop is timed on a sample of (unit, concept) pairs and extrapolated linearly. Target >= 50.

Each part is one ``bench_<part>(args) -> dict`` function registered in ``PARTS``; add a part by writing
the function, registering it and adding its flags in ``add_<part>_args``.

    python benchmarks/dissect_speed.py --part recording --probe 512 --img 64
    python benchmarks/dissect_speed.py --part auc --n 10000 --units 512 --concepts 200
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _best_of_interleaved(fns, repeats: int) -> list[float]:
    """Best time of each function, run alternately so that load from other processes hits both alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


# --------------------------------------------------------------------------------------------------
def _small_resnet(num_classes: int = 10) -> tuple[torch.nn.Module, str]:
    """The project's LWTA ResNet-18 when lwtakit.models is there, else torchvision's ResNet-18."""
    try:
        from lwtakit.models import build_model

        model = build_model("resnet18", num_classes=num_classes, act="lwta", U=2, width=0.5)
        return model, "lwtakit resnet18 (lwta U=2, width .5)"
    except Exception:  # noqa: BLE001 - fall back to a plain model so the benchmark always runs
        import torchvision

        return torchvision.models.resnet18(num_classes=num_classes), "torchvision resnet18"


def add_recording_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recording")
    g.add_argument("--probe", type=int, default=256, help="probe images")
    g.add_argument("--img", type=int, default=64, help="image side")
    g.add_argument("--batch", type=int, default=64)
    g.add_argument("--layers", default="", help="comma-separated module names (default: layer3,layer4,fc "
                   "or the model's default_layers)")


def bench_recording(args) -> dict:
    from lwtakit.recording import record_activations

    torch.manual_seed(0)
    model, what = _small_resnet()
    model.eval()
    data = torch.utils.data.TensorDataset(torch.rand(args.probe, 3, args.img, args.img),
                                          torch.randint(0, 10, (args.probe,)))
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch, shuffle=False)
    if args.layers:
        layers = args.layers.split(",")
    else:
        try:
            from lwtakit.models import default_layers

            layers = default_layers(model)
        except Exception:  # noqa: BLE001
            layers = ["layer3", "layer4", "fc"]

    def bare():  # same mode as the recording: eval + inference_mode
        with torch.inference_mode():
            for x, _ in loader:
                model(x)

    def record():
        record_activations(model, loader, layers, progress=False)

    bare()  # warm-up
    record()
    t_bare, t_rec = _best_of_interleaved([bare, record], args.repeats)
    return {"model": what, "layers": ",".join(layers), "probe": args.probe, "img": args.img,
            "bare_s": t_bare, "record_s": t_rec, "ratio record/bare (target <= 1.2)": t_rec / t_bare}


# --------------------------------------------------------------------------------------------------
def add_auc_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("auc")
    g.add_argument("--n", type=int, default=5000, help="probe images")
    g.add_argument("--units", type=int, default=256)
    g.add_argument("--concepts", type=int, default=100)
    g.add_argument("--loop-pairs", type=int, default=400, help="(unit, concept) pairs timed in the loop")


def bench_auc(args) -> dict:
    from torchmetrics.functional.classification import binary_auroc

    from lwtakit.labelers.invert import auc_matrix

    g = torch.Generator().manual_seed(0)
    acts = torch.randn(args.n, args.units, generator=g).clamp_min(0)  # ReLU-like: many ties at 0
    labels = torch.rand(args.n, args.concepts, generator=g) < 0.1
    t_vec = _best_of(lambda: auc_matrix(acts, labels), args.repeats)
    pairs = [(i % args.units, (i * 7) % args.concepts) for i in range(args.loop_pairs)]
    ints = labels.long()

    def loop():
        for u, k in pairs:
            binary_auroc(acts[:, u], ints[:, k])

    t_loop = _best_of(loop, 1) / len(pairs) * args.units * args.concepts
    return {"n": args.n, "units": args.units, "concepts": args.concepts, "vectorised_s": t_vec,
            "loop_s (extrapolated)": t_loop, "speed-up loop/vectorised (target >= 50)": t_loop / t_vec}


PARTS = {"recording": (add_recording_args, bench_recording), "auc": (add_auc_args, bench_auc)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", action="append", choices=list(PARTS), help="part(s) to run (default: all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    for add_args, _ in PARTS.values():
        add_args(p)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.part or list(PARTS):
        result = PARTS[name][1](args)
        print(f"[{name}]")
        for key, value in result.items():
            print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")


if __name__ == "__main__":
    main()

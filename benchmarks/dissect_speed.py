"""Dissection speed benchmarks: print ratios measured in one run (never pass/fail).

Parts (``--part``, repeatable; default all but ``scale``):

* ``recording``: time of :func:`lwtakit.recording.record_activations` over a probe set / time of bare
  forward passes over the same probe set (same loader, same batches). Target <= 1.2.
* ``auc``: per-concept loop with ``torchmetrics.functional.binary_auroc`` (the INVERT reference's
  formulation) / vectorised :func:`lwtakit.evaluation.ranks.auc_matrix` for all units x concepts.
  The loop is timed on a sample of (unit, concept) pairs and extrapolated linearly. Target >= 50.
* ``wpmi``: peak memory of CLIP-Dissect soft-WPMI, chunked (:func:`lwtakit.labelers.clip_dissect.similarity`
  with P given as factors) vs the dense formulation (dense P and softmax), each in a fresh subprocess
  (peak RSS minus the RSS after imports + inputs). Dense vs chunked at a small size (same labels?),
  chunked alone at N=50,000 x M=20,000 (target <= 1 GB); ``--wpmi-dense-full`` adds dense at full size.
* ``scale``: ResNet-50 + CLIP ViT-B-16 (random weights) over N synthetic 224-px images, five layers labelled
  by CLIP-Dissect and INVERT, and INVERT's length-3 search at 512 units x 1,473 concepts
  (:mod:`benchmarks.dissect_scale`). Not in the default set (minutes on a CPU): name it.

Each part is one ``bench_<part>(args) -> dict`` function registered in ``PARTS``; add a part by writing
the function, registering it and adding its flags in ``add_<part>_args``.

    python benchmarks/dissect_speed.py --part recording --probe 512 --img 64
    python benchmarks/dissect_speed.py --part auc --n 10000 --units 512 --concepts 200
    python benchmarks/dissect_speed.py --part wpmi --threads 2
    python benchmarks/dissect_speed.py --part scale --threads 2 --scale-n 200 --invert-n 50000
    python benchmarks/dissect_speed.py --part scale --device cuda --scale-n 50000 --scale-batch 256
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.dissect_scale import add_scale_args, bench_scale  # noqa: E402


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
    from lwtakit.lwta import LWTAOptions
    from lwtakit.models import ArchOptions, build_model

    model = build_model("resnet18", num_classes=num_classes, act="lwta", lwta=LWTAOptions(U=2),
                        arch=ArchOptions(width=0.5))
    return model, "lwtakit resnet18 (lwta U=2, width .5)"


def add_recording_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recording")
    g.add_argument("--probe", type=int, default=256, help="probe images")
    g.add_argument("--img", type=int, default=64, help="image side")
    g.add_argument("--batch", type=int, default=64)
    g.add_argument("--layers", default="", help="comma-separated module names (default: the model's "
                   "default_layers, the last stage + classifier)")


def bench_recording(args) -> dict:
    """One dissection (record the layers + INVERT-label every unit) vs bare forward passes over the same
    probe set: the synthetic concept data, drawn once into memory so both sides time the model only."""
    from lwtakit.data.synthetic import ConceptShapes
    from lwtakit.dissect import ConceptSource, DissectOptions, dissect
    from lwtakit.recording import record_activations

    torch.manual_seed(0)
    model, what = _small_resnet(num_classes=6)
    model.eval()
    shapes = ConceptShapes(size=args.probe, split="val", img_size=args.img)
    images = torch.stack([shapes[i][0] for i in range(len(shapes))])
    labels = torch.tensor([shapes[i][1] for i in range(len(shapes))])

    class Probe(torch.utils.data.TensorDataset):
        concept_names = shapes.concept_names
        class_names = shapes.class_names

        def concept_matrix(self):
            return shapes.concept_matrix()

    probe = Probe(images, labels)
    loader = torch.utils.data.DataLoader(probe, batch_size=args.batch, shuffle=False)
    if args.layers:
        layers = args.layers.split(",")
    else:
        from lwtakit.models import default_layers

        layers = default_layers(model)
    concepts = ConceptSource.from_dataset(probe)

    def bare():  # same mode as the recording: eval + inference_mode
        with torch.inference_mode():
            for x, _ in loader:
                model(x)

    def record():
        record_activations(model, loader, layers, progress=False)

    def dissection(**options):
        return lambda: dissect(model, probe, layers, ["invert"], concepts,
                               DissectOptions(batch_size=args.batch, progress=False, **options))

    record_and_label = dissection(mode="argmax", heldout=None)  # one pass, labels in-sample
    heldout = dissection(mode="argmax")  # + held-out scores, p-values and concepts per unit (issue 8)
    mc = dissection()  # the default: mc (4 passes) + held out

    bare()  # warm-up
    record_and_label()
    t_bare, t_rec, t_all, t_held, t_mc = _best_of_interleaved([bare, record, record_and_label, heldout, mc],
                                                              args.repeats)
    units = sum(int(record_activations(model, loader, [ly], progress=False).acts[ly].shape[1]) for ly in layers)
    return {"model": what, "layers": ",".join(layers), "units": units, "concepts": len(shapes.concept_names),
            "probe": args.probe, "img": args.img, "bare_s": t_bare, "record_s": t_rec, "record+invert_s": t_all,
            "ratio record/bare": t_rec / t_bare,
            "ratio (record + INVERT labels)/bare (target <= 1.2)": t_all / t_bare,
            "ratio held-out assessment/in-sample dissection (target <= 1.1)": t_held / t_all,
            "ratio default dissection (mc 4 passes + held out)/argmax in-sample": t_mc / t_all}


# --------------------------------------------------------------------------------------------------
def add_auc_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("auc")
    g.add_argument("--n", type=int, default=5000, help="probe images")
    g.add_argument("--units", type=int, default=256)
    g.add_argument("--concepts", type=int, default=100)
    g.add_argument("--loop-pairs", type=int, default=400, help="(unit, concept) pairs timed in the loop")


def bench_auc(args) -> dict:
    from torchmetrics.functional.classification import binary_auroc

    from lwtakit.evaluation.ranks import auc_matrix

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


# --------------------------------------------------------------------------------------------------
def add_wpmi_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("wpmi (CLIP-Dissect soft-WPMI peak memory, chunked vs dense)")
    g.add_argument("--wpmi-n", type=int, default=50000, help="probe images N (full-size chunked run)")
    g.add_argument("--wpmi-m", type=int, default=20000, help="concepts M (full-size chunked run)")
    g.add_argument("--wpmi-units", type=int, default=512, help="units C")
    g.add_argument("--wpmi-dim", type=int, default=512, help="CLIP embedding dim D")
    g.add_argument("--wpmi-small-n", type=int, default=20000, help="N of the dense-vs-chunked comparison")
    g.add_argument("--wpmi-small-m", type=int, default=10000, help="M of the dense-vs-chunked comparison")
    g.add_argument("--wpmi-dense-full", action="store_true",
                   help="also run the dense variant at full size (needs ~12 GB free memory; run it alone)")
    g.add_argument("--wpmi-skip-full", action="store_true", help="only the small dense-vs-chunked comparison")
    g.add_argument("--wpmi-budget-mb", type=int, default=256, help="max_bytes of the chunked variant (MiB)")


def _dense_soft_wpmi(acts, img, txt, top_k=100, a=10.0, lam=1.0, p_start=0.998, p_end=0.97, min_prob=1e-7):
    """The straightforward formulation of published soft-WPMI: dense P, dense softmax over concepts, then
    per unit ``log p(t|q_k) = sum_r log(1 + p_r (S - 1) + min_prob)``; marginal over the units."""
    P = img @ txt.T  # [N, M]
    probs = torch.softmax(a * P, dim=1)
    del P
    top = torch.topk(acts, top_k, dim=0).indices.T
    w = (p_start - torch.arange(top_k) / top_k * (p_start - p_end))[:, None]
    out = torch.empty(acts.shape[1], txt.shape[0])
    for k in range(acts.shape[1]):
        out[k] = torch.log(1 + w * (probs[top[k]] - 1) + min_prob).sum(0)
    log_marginal = torch.logsumexp(out, dim=0) - torch.log(torch.tensor(float(acts.shape[1])))
    return out - lam * log_marginal


def _wpmi_child(spec_json: str) -> None:
    """Run one variant in this (fresh) process; print peak RSS above the baseline after imports + inputs."""
    import json
    import resource

    from lwtakit.labelers.clip_dissect import similarity

    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    g = torch.Generator().manual_seed(0)
    n, m, c, d = spec["n"], spec["m"], spec["c"], spec["d"]
    img = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=1)
    acts = torch.randn(n, c, generator=g).clamp_min_(0)
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with torch.inference_mode():
        if spec["variant"] == "dense":
            sim = _dense_soft_wpmi(acts, img, txt)
        else:
            sim = similarity(acts, (img, txt), "soft_wpmi", max_bytes=spec["budget"])
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    values, labels = sim.max(dim=1)
    torch.save({"labels": labels, "scores": values, "sim": sim}, spec["out"])
    print(json.dumps({"extra_mb": (peak_kb - base_kb) / 1024, "base_mb": base_kb / 1024, "seconds": seconds}))


def _run_wpmi_child(variant: str, n: int, m: int, args, out_path: str) -> dict:
    import json
    import subprocess

    spec = {"variant": variant, "n": n, "m": m, "c": args.wpmi_units, "d": args.wpmi_dim,
            "budget": args.wpmi_budget_mb * 2**20, "out": out_path, "threads": torch.get_num_threads()}
    code = ("import runpy, sys; runpy.run_path(sys.argv[1])['_wpmi_child'](sys.argv[2])")
    proc = subprocess.run([sys.executable, "-c", code, os.path.abspath(__file__), json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_wpmi(args) -> dict:
    import tempfile

    result: dict = {"units": args.wpmi_units, "dim": args.wpmi_dim, "budget_mb": args.wpmi_budget_mb,
                    "measure": "peak RSS of a fresh subprocess minus its RSS after imports + inputs"}
    sizes = [("small", args.wpmi_small_n, args.wpmi_small_m)]
    if not args.wpmi_skip_full:
        sizes.append(("full", args.wpmi_n, args.wpmi_m))
    with tempfile.TemporaryDirectory() as tmp:
        for tag, n, m in sizes:
            variants = ["chunked", "dense"] if tag == "small" or args.wpmi_dense_full else ["chunked"]
            runs = {}
            for variant in variants:
                out = os.path.join(tmp, f"{tag}_{variant}.pt")
                runs[variant] = _run_wpmi_child(variant, n, m, args, out)
                if "error" in runs[variant]:
                    result[f"{tag} N={n} M={m} {variant}"] = runs[variant]["error"]
                    continue
                result[f"{tag} N={n} M={m} {variant} extra MB"] = runs[variant]["extra_mb"]
                result[f"{tag} N={n} M={m} {variant} s"] = runs[variant]["seconds"]
            if all(v in runs and "error" not in runs[v] for v in ("chunked", "dense")):
                a = torch.load(os.path.join(tmp, f"{tag}_chunked.pt"), weights_only=True)
                b = torch.load(os.path.join(tmp, f"{tag}_dense.pt"), weights_only=True)
                result[f"{tag} same labels (fraction)"] = float((a["labels"] == b["labels"]).float().mean())
                result[f"{tag} max |score diff|"] = float((a["sim"] - b["sim"]).abs().max())
                # Where labels differ: how far apart the two concepts are in the dense scores (a near tie
                # within float32 rounding, or a real disagreement?).
                diff = (a["labels"] != b["labels"]).nonzero().flatten()
                if len(diff):
                    gap = b["sim"][diff, b["labels"][diff]] - b["sim"][diff, a["labels"][diff]]
                    result[f"{tag} units with other label"] = len(diff)
                    result[f"{tag} max dense-score gap at those units"] = float(gap.max())
                result[f"{tag} memory ratio dense/chunked"] = runs["dense"]["extra_mb"] / max(
                    runs["chunked"]["extra_mb"], 1e-9)
        full = result.get(f"full N={args.wpmi_n} M={args.wpmi_m} chunked extra MB")
        if isinstance(full, float):
            result["full-size chunked within 1 GB (target)"] = str(full <= 1024)
    return result


PARTS = {"recording": (add_recording_args, bench_recording), "auc": (add_auc_args, bench_auc)}
PARTS["wpmi"] = (add_wpmi_args, bench_wpmi)
PARTS["scale"] = (add_scale_args, bench_scale)


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
    for name in args.part or [part for part in PARTS if part != "scale"]:
        result = PARTS[name][1](args)
        print(f"[{name}]")
        for key, value in result.items():
            print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")


if __name__ == "__main__":
    main()

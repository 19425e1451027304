"""Analyse trained networks: label their units with concepts, explain single images, compare runs.

    python analyze.py dissect --ckpt runs/default-.../checkpoints/last.ckpt --out reports/default
    python analyze.py dissect --model torchvision:resnet18 --probe folder:PATH --methods clip_dissect \\
        --clip-pretrained openai --concepts words.txt --out reports/resnet18
    python analyze.py label --activations A.npy --method invert --concept-labels L.npy \\
        --concept-names names.txt --out labels.csv
    python analyze.py explain --ckpt last.ckpt --image cat.png [--layer layer4.1.act2] [--labels labels.csv]
    python analyze.py compare runs/default-A runs/default_dense-B --out reports/compare

Every command exits with status 2 and one line ``error: ...`` on bad input, and writes nothing half-way.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lwtakit.errors import ArgumentParser, UserError

CLIP_FUNCTIONS = ("soft_wpmi", "wpmi", "rank_reorder", "cos", "cos_cubed")
DEVICE_HELP = "auto (CUDA when present, else CPU) | cpu | cuda | cuda:N"


# ------------------------------------------------------------------------------------------- helpers
def _probe(spec: str | None, loaded, size: int, seed: int):
    """The probe set: ``synthetic``, ``mnist:PATH``, ``cifar10:ROOT``, ``cifar100:ROOT``,
    ``imagefolder:ROOT`` (its val split) or ``folder:PATH`` (unlabelled images); default: the validation
    split of the data the checkpoint was trained on (synthetic for torchvision models)."""
    from lwtakit.data import build_dataset, probe_subset

    if spec is None and loaded.cfg is not None:
        ds = loaded.dataset("val")
    else:
        name, _, root = (spec or "synthetic").partition(":")
        name = {"folder": "probe_folder"}.get(name, name)
        ds = build_dataset(name, "val", root=root or None, img_size=loaded.img_size, seed=seed)
    return probe_subset(ds, size, seed)


def _device(spec: str) -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU; an unusable device is a UserError."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device {spec!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {spec} but no CUDA device is visible; use --device cpu")
    return device


def _clip(args, device):
    if args.clip_pretrained is None and not args.clip_model.startswith("local-dir:"):
        return None
    from lwtakit.clip import load_clip

    return load_clip(args.clip_model, args.clip_pretrained, device=str(device), cache_dir=args.clip_cache)


def _read_names(path: str) -> list[str]:
    from lwtakit.concept_sets import read_concept_file

    return read_concept_file(path)


def _load_npy(path: str, what: str) -> np.ndarray:
    if not Path(path).is_file():
        raise UserError(f"{what} file {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise UserError(f"{what} file {path} is not a plain .npy array ({exc})") from None


# ------------------------------------------------------------------------------------------- dissect
def cmd_dissect(args) -> Path:
    from lwtakit import report
    from lwtakit.checkpoint import load_model
    from lwtakit.concept_sets import load_concepts
    from lwtakit.dissect import ConceptSource, check_methods, dissect
    from lwtakit.evaluation import class_name_similarity, concept_coverage, final_layer_accuracy
    from lwtakit.io import staged_dir, write_csv
    from lwtakit.lwta import lwta_inference
    from lwtakit.models import default_layers
    from lwtakit.rng import fork_rng

    device = _device(args.device)
    loaded = load_model(args.ckpt or args.model)
    model = loaded.model.to(device)
    probe = _probe(args.probe, loaded, args.probe_size, args.seed)
    clip = _clip(args, device) if {"clip_dissect", "describe"} & set(args.methods) else None
    clip_concepts = load_concepts(args.concepts) if clip is not None else None
    concepts = ConceptSource.from_dataset(probe, clip=clip, clip_concepts=clip_concepts,
                                          clip_cache_dir=args.clip_cache)
    if "describe" in args.methods:
        from lwtakit.labelers.describe import CocaCaptioner

        concepts.captioner = CocaCaptioner(args.caption_model, args.caption_pretrained, device=str(device))
    check_methods(args.methods, concepts, probe)
    layers = args.layers or default_layers(model)
    if args.top_images > len(probe):
        raise UserError(f"--top-images {args.top_images} exceeds the probe set's {len(probe)} images; "
                        "lower --top-images or raise --probe-size")
    started = time.perf_counter()
    # every pass over the model in --inference mode (None: the checkpoint's own), from --seed
    with lwta_inference(model, args.inference), fork_rng(args.seed):
        result = dissect(model, probe, layers, args.methods, concepts, pca_components=args.pca,
                         max_length=args.max_length, beam=args.beam, clip_method=args.clip_method,
                         topk=args.top_images, batch_size=args.batch_size, device=device)
        completeness = _completeness(model, probe, layers[:-1] or layers, result, args, device) if args.pca else None
    rows = result.rows
    evaluation = {}
    classifier = layers[-1]
    if classifier in default_layers(model)[-1:]:
        for method in args.methods:
            final = [r for r in rows if r["layer"] == classifier and r["method"] == method]
            if not final:
                continue  # e.g. IoU has no labels for a linear layer
            acc = final_layer_accuracy(final, loaded.class_names)
            evaluation.update({f"final-layer label {k} ({method})": v for k, v in acc.items() if k != "n"})
            if clip is not None:  # CLIP-Dissect's "CLIP cos": label vs class name in CLIP's text space
                evaluation[f"final-layer label CLIP cos ({method})"] = class_name_similarity(
                    final, loaded.class_names, clip.encode_texts)
    if getattr(probe, "concept_groups", None):
        for method in args.methods:
            evaluation.update({f"{k} ({method})": v for k, v in
                               concept_coverage([r for r in rows if r["method"] == method],
                                                probe.concept_groups).items()})
    infos = []
    for layer in layers:
        firing = result.recording.firing[layer].numpy()
        best = sorted((r for r in rows if r["layer"] == layer and r["score"] is not None), key=lambda r: -r["score"])
        units = list(dict.fromkeys(r["unit"] for r in best))[: args.grid_units or None]
        top = {u: torch.stack([probe[i][0] for i in result.top_images(layer, u, args.top_images)]) for u in units}
        infos.append(report.LayerInfo(name=layer, units=len(firing), active_fraction=float(firing.mean()),
                                      firing=firing, top_images=top))
    drift = None
    history = Path(args.ckpt).resolve().parent.parent / "labels.csv" if args.ckpt else None
    if history is not None and history.is_file():  # a train.py run folder: its label history over training
        from lwtakit.drift import agreement
        from lwtakit.io import read_csv

        past = read_csv(history)
        drift = {f"{layer} ({m})": pts for m in {r["method"] for r in past}
                 for layer, pts in agreement(past, m).items()} or None
    meta = {"model": loaded.name, "probe": f"{args.probe or 'training data (val)'}, {len(probe)} images",
            "methods": ", ".join(args.methods), "layers": ", ".join(layers),
            "seconds": f"{time.perf_counter() - started:.1f}"}
    with staged_dir(args.out) as stage:
        write_csv(stage / "labels.csv", rows, _columns(rows))
        report.dissection_report(stage, title=f"Dissection of {loaded.name}", rows=rows, layers=infos,
                                 evaluation=evaluation, completeness=completeness, drift=drift, meta=meta)
    return Path(args.out) / "report.html"


def _columns(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


def _completeness(model, probe, layers, result, args, device) -> dict[str, dict]:
    """Dey et al. 2020: variance explained and accuracy under ablation, top-k PCs vs top-k neurons."""
    from lwtakit.labelers.pca import ablation_curve, variance_curves

    curves = {}
    for layer in layers:
        acts = result.recording.acts[layer]
        v = variance_curves(acts)
        entry = {"k": v["k"].tolist(), "pca_variance": v["pca"].tolist(), "neuron_variance": v["neurons"].tolist()}
        if result.recording.labels is not None:
            C = acts.shape[1]
            ks = sorted({0, *[int(round(C * f)) for f in (0.05, 0.1, 0.25, 0.5, 0.75)], C})
            entry["k_ablation"] = ks
            for basis in ("pca", "neurons"):
                key = "pca_ablation_acc" if basis == "pca" else "neuron_ablation_acc"
                entry[key] = ablation_curve(model, layer, probe, basis, ks, acts=acts, seed=args.seed,
                                            batch_size=args.batch_size, device=device)
        curves[layer] = entry
    return curves


# --------------------------------------------------------------------------------------------- label
def cmd_label(args) -> Path:
    from lwtakit.io import write_csv

    acts = _load_npy(args.activations, "activations")
    if acts.ndim != 2 or not np.issubdtype(acts.dtype, np.number):
        raise UserError(f"activations {args.activations} must be a numeric [N, C] array, got shape {acts.shape}")
    names = _read_names(args.concept_names)
    if args.method == "invert":
        if args.concept_labels is None:
            raise UserError("method invert needs --concept-labels L.npy (bool [N, K])")
        from lwtakit.labelers.invert import label_units

        labels = _load_npy(args.concept_labels, "concept labels")
        _check_concepts(acts, labels, names, args.concept_labels)
        if labels.dtype != bool and not np.isin(labels, (0, 1)).all():
            raise UserError(f"concept labels {args.concept_labels} must be boolean (or 0/1)")
        rows = label_units(torch.from_numpy(acts.astype(np.float64)), torch.from_numpy(labels.astype(bool)), names,
                           max_length=args.max_length, beam=args.beam)
        columns = ["unit", "label", "score", "auc", "p_value", "length"]
    elif args.method in CLIP_FUNCTIONS:
        if args.concept_scores is None:
            raise UserError(f"method {args.method} needs --concept-scores P.npy "
                            "(float [N, K] image-concept similarity)")
        from lwtakit.labelers.clip_dissect import label_units

        scores = _load_npy(args.concept_scores, "concept scores")
        _check_concepts(acts, scores, names, args.concept_scores)
        rows = label_units(torch.from_numpy(acts.astype(np.float32)), torch.from_numpy(scores.astype(np.float32)),
                           names, method=args.method)
        columns = ["unit", "label", "score", "top5"]
    else:
        raise UserError(f"unknown method {args.method!r}; choose invert or one of {', '.join(CLIP_FUNCTIONS)}")
    for r in rows:
        r.pop("formula", None)
        if isinstance(r.get("top5"), list):
            r["top5"] = "|".join(map(str, r["top5"]))
    return write_csv(args.out, rows, columns)


def _check_concepts(acts: np.ndarray, matrix: np.ndarray, names: list[str], path: str) -> None:
    if matrix.ndim != 2 or matrix.shape[0] != acts.shape[0]:
        raise UserError(f"{path} has shape {matrix.shape}; it needs one row per image of the activations "
                        f"({acts.shape[0]}) and one column per concept")
    if matrix.shape[1] != len(names):
        raise UserError(f"{path} has {matrix.shape[1]} concept columns but the names file has {len(names)} names")


# ------------------------------------------------------------------------------------------- explain
def cmd_explain(args) -> list[dict]:
    from PIL import Image, UnidentifiedImageError

    from lwtakit.checkpoint import load_model
    from lwtakit.explain import active_neurons
    from lwtakit.io import read_csv
    from lwtakit.lwta import lwta_layers

    device = _device(args.device)
    loaded = load_model(args.ckpt or args.model)
    if not Path(args.image).is_file():
        raise UserError(f"image {args.image} does not exist")
    try:
        img = Image.open(args.image).convert("L" if loaded.in_chans == 1 else "RGB")
    except (UnidentifiedImageError, OSError):
        raise UserError(f"{args.image} is not a readable image file") from None
    img = img.resize((loaded.img_size, loaded.img_size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
    layer = args.layer or (list(lwta_layers(loaded.model)) or [None])[-1]
    if layer is None:
        raise UserError("the model has no LWTA layer; name one with --layer")
    labels = None
    if args.labels:
        if not Path(args.labels).is_file():
            raise UserError(f"labels file {args.labels} does not exist")
        labels = {int(r["unit"]): r["label"] for r in read_csv(args.labels) if r["layer"] == layer}
    rows = active_neurons(loaded.model.to(device), x, layer, labels=labels, top=args.top, device=device)
    print(f"{'unit':>6} {'activation':>11}  label")
    for r in rows:
        print(f"{r['unit']:>6} {r['activation']:>11.4f}  {r.get('label') or ''}")
    return rows


# ------------------------------------------------------------------------------------------- compare
def cmd_compare(args) -> Path:
    from lwtakit.compare import compare

    return compare(args.runs, args.out, probe_size=args.probe_size, seed=args.seed, eval_size=args.eval_size,
                   device=_device(args.device))


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Label, explain and compare the units of vision networks.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("dissect", help="label every unit of chosen layers by every chosen method; HTML report")
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="checkpoint written by train.py")
    src.add_argument("--model", help="torchvision:NAME (ImageNet weights)")
    d.add_argument("--layers", nargs="+", help="module names (default: last stage activations + classifier)")
    d.add_argument("--methods", nargs="+", default=["invert"],
                   help="invert clip_dissect iou describe (default: invert)")
    d.add_argument("--probe", help="synthetic | mnist:PATH | cifar10:ROOT | imagefolder:ROOT | folder:PATH")
    d.add_argument("--probe-size", type=int, default=1000)
    d.add_argument("--concepts", default="synthetic", help="concept set for CLIP: builtin name or text file")
    d.add_argument("--pca", type=int, default=0, help="also label the top-k principal directions; completeness")
    d.add_argument("--max-length", type=int, default=1, help="INVERT formula length")
    d.add_argument("--beam", type=int, default=5)
    d.add_argument("--clip-model", default="ViT-B-16")
    d.add_argument("--clip-pretrained", help="open_clip tag (online), weights file, or local-dir:FOLDER")
    d.add_argument("--clip-cache", help="folder for cached CLIP embeddings")
    d.add_argument("--clip-method", default="soft_wpmi", choices=CLIP_FUNCTIONS)
    d.add_argument("--caption-model", default="coca_ViT-B-32", help="open_clip CoCa model (describe)")
    d.add_argument("--caption-pretrained", default="mscoco_finetuned_laion2b_s13b_b90k",
                   help="CoCa weights: tag, file or local-dir: (describe)")
    d.add_argument("--inference", choices=["sample", "argmax"], help="LWTA mode while recording")
    d.add_argument("--top-images", type=int, default=8)
    d.add_argument("--grid-units", type=int, default=12,
                   help="best-scoring units per layer shown with their top images (0: every unit)")
    d.add_argument("--batch-size", type=int, default=128)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="auto", help=DEVICE_HELP)
    d.add_argument("--out", required=True)

    lab = sub.add_parser("label", help="label activations you already have (A.npy [N, C])")
    lab.add_argument("--activations", required=True)
    lab.add_argument("--method", required=True, help="invert | " + " | ".join(CLIP_FUNCTIONS))
    lab.add_argument("--concept-labels", help="bool [N, K] .npy (invert)")
    lab.add_argument("--concept-scores", help="float [N, K] .npy image-concept similarity (CLIP functions)")
    lab.add_argument("--concept-names", required=True, help="text file, one concept a line")
    lab.add_argument("--max-length", type=int, default=1)
    lab.add_argument("--beam", type=int, default=5)
    lab.add_argument("--out", required=True)

    e = sub.add_parser("explain", help="the winning units of a layer for one image, with their labels")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt")
    src.add_argument("--model")
    e.add_argument("--image", required=True)
    e.add_argument("--layer", help="default: the last LWTA layer")
    e.add_argument("--labels", help="labels.csv from dissect (or a run folder's)")
    e.add_argument("--top", type=int, default=20)
    e.add_argument("--device", default="auto", help=DEVICE_HELP)

    c = sub.add_parser("compare", help="put runs (e.g. sparse and dense) side by side; HTML report + CSV")
    c.add_argument("runs", nargs="+", help="run folders or checkpoints")
    c.add_argument("--probe-size", type=int, default=1000)
    c.add_argument("--eval-size", type=int, default=1000, help="test images for accuracy per inference mode")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="auto", help=DEVICE_HELP)
    c.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = {"dissect": cmd_dissect, "label": cmd_label, "explain": cmd_explain, "compare": cmd_compare}[
            args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if isinstance(out, Path):
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Analyse trained networks: label their units with concepts, explain single images, compare runs.

    python analyze.py dissect --ckpt runs/default-.../checkpoints/last.ckpt --out reports/default
    python analyze.py dissect --model torchvision:resnet18 --probe folder:PATH --methods clip_dissect \\
        --clip-pretrained openai --concepts words20k --drop-class-words --out reports/resnet18
    python analyze.py label --activations A.npy --method invert --concept-labels L.npy \\
        --concept-names names.txt [--hierarchy parents.csv] --out labels.csv
    python analyze.py sanity --activations A.npy --concept-labels L.npy --concept-names names.txt \\
        --out sanity.csv [--labels labels.csv] [--metrics f1,iou] [--alpha 0.005] [--seed 0] \\
        [--protocol neuroneval | --protocol averaged --repeats 10]
    python analyze.py explain --ckpt last.ckpt --image cat.png [--layer layer4.1.act2] [--labels labels.csv]
    python analyze.py compare runs/default-A runs/default_dense-B --out reports/compare

Every command exits with status 2 and one line ``error: ...`` on bad input, and writes nothing half-way.
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path
from typing import TYPE_CHECKING

# Only light modules here: --help and argument errors answer before numpy, torch and open_clip are imported
# (issue 11); each command imports the heavy ones it needs.
from lwtakit.console import quiet_third_party
from lwtakit.errors import ArgumentParser, UserError, float_at_least, int_at_least
from lwtakit.evaluation.options import DEFAULT_ALPHA
from lwtakit.labelers.configs import ALTERNATIVES, SIMILARITIES, InvertConfig

if TYPE_CHECKING:
    import numpy as np
    import torch

# The most stochastic passes dissect --mode mc averages (see _passes for why).
MAX_PASSES = 1000
DEVICE_HELP = "auto (CUDA when present, else CPU) | cpu | cuda | cuda:N"
HIERARCHY_HELP = ("parent map (CSV rows child,parent,... or JSON {child: [parents]}): each concept's ancestors "
                  "become concepts too, as INVERT's WordNet hypernyms of the ImageNet classes")


# ------------------------------------------------------------------------------------------- helpers
def _probe(spec: str | None, loaded, size: int | None, seed: int):
    """The probe set and what it is in words: ``synthetic``, ``mnist:PATH``, ``cifar10:ROOT``, ``cifar100:ROOT``,
    ``imagefolder:ROOT`` (its val split) or ``folder:PATH`` (unlabelled images); default: the validation
    split of the data the checkpoint was trained on, as the run made it (synthetic for torchvision models).
    ``size`` None: all of it up to 1000 images; more than it holds is a UserError."""
    from lwtakit.analysis import describe_images, take_images
    from lwtakit.data import build_dataset

    if spec is None and loaded.cfg is not None:
        ds, source = loaded.dataset("val"), f"the run’s ({loaded.cfg.data.name})"
    else:
        name, _, root = (spec or "synthetic").partition(":")
        name = {"folder": "probe_folder"}.get(name, name)
        ds, source = build_dataset(name, "val", root=root or None, img_size=loaded.img_size, seed=seed), spec or name
    probe = take_images(ds, size, seed, "--probe-size")
    if spec and spec.startswith("folder:"):
        return probe, describe_images(probe, "", f"the images of {spec}", seed)
    return probe, describe_images(probe, "val", source, seed)


def _device(spec: str) -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU; an unusable device is a UserError."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device {spec!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {spec} but no CUDA device is visible; use --device cpu")
    return device


def _read_names(path: str) -> list[str]:
    from lwtakit.concept_sets import read_concept_file

    return read_concept_file(path)


def _load_npy(path: str, what: str) -> np.ndarray:
    """The array saved in the .npy file ``path``; an empty, truncated or non-.npy file is a UserError."""
    import numpy as np

    if not Path(path).is_file():
        raise UserError(f"{what} file {path} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        detail = "it is empty" if Path(path).stat().st_size == 0 else str(exc).splitlines()[0]
        raise UserError(f"{what} file {path} is not a plain .npy array ({detail}); save it with np.save") from None
    if not isinstance(data, np.ndarray):  # np.load sniffs the content: an .npz archive under a .npy name
        data.close()
        raise UserError(f"{what} file {path} is an .npz archive, not a .npy array; save one array with np.save")
    return data


def _load_activations(path: str) -> np.ndarray:
    """Activations ``[N, C]``: numeric, finite, at least two images (one cannot rank images) and one unit."""
    import numpy as np

    acts = _load_npy(path, "activations")
    if acts.ndim != 2 or not np.issubdtype(acts.dtype, np.number):
        raise UserError(f"activations {path} must be a numeric [N, C] array, got shape {acts.shape}")
    if acts.shape[0] < 2 or acts.shape[1] < 1:
        raise UserError(f"activations {path} have shape {acts.shape}; labelling needs at least 2 images (rows) "
                        "and 1 unit (column)")
    _check_finite(acts, path, "activations")
    return acts


def _check_finite(matrix: np.ndarray, path: str, what: str) -> None:
    import numpy as np

    if np.issubdtype(matrix.dtype, np.floating) and not np.isfinite(matrix).all():
        row, col = np.argwhere(~np.isfinite(matrix))[0]
        raise UserError(f"{what} {path} hold NaN or infinite values (first at row {row}, column {col}); "
                        "replace them before labelling")


# ------------------------------------------------------------------------------------------- dissect
def cmd_dissect(args) -> Path:
    """One process, or ``--devices N`` (x ``--num-nodes M``) Lightning Fabric processes that each record a shard
    of the probe set; rank 0 labels and writes the report (:mod:`lwtakit.shard`)."""
    from lwtakit.io import check_output_folder

    check_output_folder(args.out)  # a file or unwritable place fails now, not after the dissection
    _check_layer_names(args.layers)
    device = _device(args.device)
    if args.devices * args.num_nodes == 1:
        return _dissect(args, device, None)
    import torch
    from lightning.fabric import Fabric

    if device.type == "cuda" and (device.index is not None or args.devices > torch.cuda.device_count()):
        raise UserError(f"--devices {args.devices} uses GPUs 0..{args.devices - 1} and this machine sees "
                        f"{torch.cuda.device_count()}; give --device cuda (no index) and at most that many --devices")

    fabric = Fabric(accelerator="cuda" if device.type == "cuda" else "cpu", devices=args.devices,
                    num_nodes=args.num_nodes, strategy="ddp_spawn")
    out = fabric.launch(_dissect_process, args)
    if isinstance(out, UserError):  # raised alike in every process (its inputs are theirs too): one line
        raise out
    return out


def _dissect_process(fabric, args) -> Path | UserError | None:
    """One Fabric process of ``dissect --devices N``: rank 0 returns the report's path; a bad input comes back as the
    error (an exception would reach the parent as a traceback of the spawned process)."""
    from lwtakit.shard import Collective

    try:
        return _dissect(args, fabric.device, Collective.current(fabric.device))
    except UserError as exc:
        return exc


def _dissect(args, device, collective) -> Path | None:
    """Build the dissection with the factory the training callback uses
    (:func:`lwtakit.dissection_setup.dissection_from_config`), from the ``dissection`` config the flags give."""
    from lwtakit.analysis import DissectRequest, dissect_to_report, run_history
    from lwtakit.checkpoint import load_model
    from lwtakit.dissection_setup import SetupOptions, dissection_from_config
    from lwtakit.labelers.base import create_labelers
    from lwtakit.models import default_layers
    from lwtakit.models.precision import at_precision

    cfg = _dissection_config(args)
    create_labelers(cfg.methods, cfg)  # unknown methods and bad settings fail before anything is loaded
    loaded = load_model(args.ckpt or args.model)
    model = at_precision(loaded.model, args.precision).to(device)
    probe, probe_text = _probe(args.probe, loaded, args.probe_size, args.seed)
    made = dissection_from_config(cfg, probe, SetupOptions(
        device=device, seed=args.seed, collective=collective, progress=collective is None or collective.is_root,
        precision=args.precision, entry="analyze"))
    if cfg.top_images > len(probe):
        raise UserError(f"--top-images {cfg.top_images} exceeds the probe set's {len(probe)} images; "
                        "lower --top-images or raise --probe-size")
    history = run_history(args.ckpt) if args.ckpt else None  # the run's labels.csv, for the drift plot
    request = DissectRequest(
        layers=args.layers or default_layers(model), labelers=made.labelers, grid_units=cfg.grid_units,
        seed=args.seed, options=made.options, history=history, probe_name=args.probe or "", probe_text=probe_text,
        source=args.ckpt or args.model)
    return dissect_to_report(loaded, probe, made.concepts, request, args.out)


def _dissection_config(args):
    """The ``dissection`` config (:class:`lwtakit.config.DissectionConfig`) that dissect's flags give; each flag's
    default is the schema's. ``--batch-size`` is also CLIP's batch; ``--seed`` also seeds the held-out split."""
    from lwtakit.config import ClipConfig, DissectionConfig
    from lwtakit.evaluation.options import HeldOutOptions
    from lwtakit.labelers.configs import CaptionsConfig, ClipDissectConfig

    heldout = HeldOutOptions(enabled=args.heldout != 0, fraction=args.heldout or HeldOutOptions().fraction,
                             seed=args.seed)
    clip = ClipConfig(model=args.clip_model, pretrained=args.clip_pretrained, cache_dir=args.clip_cache,
                      batch_size=args.batch_size)
    captions = CaptionsConfig(similarity=args.clip_similarity, model=args.caption_model,
                              pretrained=args.caption_pretrained)
    return DissectionConfig(
        methods=list(args.methods), batch_size=args.batch_size, memory_budget_gb=args.memory_budget,
        concepts=args.concepts, drop_class_words=args.drop_class_words, hierarchy=args.hierarchy,
        top_images=args.top_images, grid_units=args.grid_units, pca_components=args.pca, mode=args.mode,
        passes=args.passes, heldout=heldout, clip=clip, invert=_invert_config(args),
        clip_dissect=ClipDissectConfig(similarity=args.clip_similarity), captions=captions)


def _check_layer_names(layers: list[str] | None) -> None:
    """``--layers`` names each layer once (a repeat would be labelled twice and its units' rows collide)."""
    repeated = [name for i, name in enumerate(layers or []) if name in (layers or [])[:i]]
    if repeated:
        raise UserError(f"--layers names {repeated[0]} more than once; give each layer once")


def _passes(text: str) -> int:
    """``--passes``: 1 .. :data:`MAX_PASSES`."""
    value = int_at_least(1)(text)
    if value > MAX_PASSES:
        raise argparse.ArgumentTypeError(
            f"must be at most {MAX_PASSES}, got {value}: every pass is a forward pass over the whole probe set, "
            f"and the mean of {MAX_PASSES} passes already varies by about 1/sqrt({MAX_PASSES}) = 3% of one pass's "
            "spread")
    return value


def _hierarchy(args):
    """The parent map of ``--hierarchy`` (None without it)."""
    from lwtakit.hierarchy import read_hierarchy

    return read_hierarchy(args.hierarchy) if args.hierarchy else None


def _invert_config(args) -> InvertConfig:
    """The INVERT settings of the flags :func:`_add_invert_flags` adds; ``--parsimony off`` is the reference beam
    search of Bykov et al. 2023 (Alg. 1: the admissible formula of highest AUC wins)."""
    config = InvertConfig(max_length=args.max_length, beam=args.beam, min_fraction=args.min_fraction,
                          max_fraction=args.max_fraction, alternative=args.alternative)
    return config if args.parsimony == "on" else config.without_parsimony()


def _add_invert_flags(parser: argparse.ArgumentParser) -> None:
    """The INVERT flags of ``dissect`` and ``label`` (defaults: :class:`InvertConfig`'s)."""
    default = InvertConfig()
    parser.add_argument("--max-length", type=int_at_least(1), default=default.max_length,
                        help="INVERT: most concepts joined by AND/OR/NOT in one label (formula length)")
    parser.add_argument("--beam", type=int_at_least(1), default=default.beam, help="INVERT: formulas kept per length")
    parser.add_argument("--min-fraction", type=float, default=default.min_fraction,
                        help="INVERT: least share of images a label may cover")
    parser.add_argument("--max-fraction", type=float, default=default.max_fraction,
                        help="INVERT: largest share of images a label may cover (default %(default)s, the paper's)")
    parser.add_argument("--parsimony", choices=["on", "off"], default="on",
                        help="INVERT: on = a longer formula must gain AUC and pass a test per term; off = the "
                             "reference beam search, the highest AUC wins (default: on)")
    parser.add_argument("--alternative", choices=ALTERNATIVES, default=default.alternative,
                        help="INVERT label p-value: one-sided greater (the unit detects the concept) or two-sided "
                             "(the reference implementation's) Mann-Whitney test (default: %(default)s)")


# --------------------------------------------------------------------------------------------- label
def cmd_label(args) -> Path:
    """Label given activations with the registered labeler that claims ``--method``
    (:func:`lwtakit.labelers.base.array_methods`): one that needs concept labels reads ``--concept-labels``, one that
    needs CLIP reads ``--concept-scores``."""
    from lwtakit.io import check_output_file, write_csv
    from lwtakit.labelers.base import ConceptArrays

    check_output_file(args.out)
    labeler = _array_labeler(args)
    metric_names = _metric_names(args) if args.metrics is not None else []
    acts = _load_activations(args.activations)
    names = _read_names(args.concept_names)
    if metric_names and args.concept_labels is None:
        raise UserError("--metrics scores labels against concept labels; give --concept-labels L.npy (bool [N, K])")
    concepts = _load_concept_labels(args.concept_labels, acts, names) if metric_names else None
    arrays = ConceptArrays(names=names, method=args.method)
    if _reads_concept_labels(labeler):
        if args.concept_labels is None:
            raise UserError(f"method {args.method} needs --concept-labels L.npy (bool [N, K])")
        arrays.labels = _load_concept_labels(args.concept_labels, acts, names)
        if args.hierarchy:
            arrays.labels, arrays.names = _expand_labels(arrays.labels, names, _hierarchy(args))
            concepts, names = arrays.labels, arrays.names
    else:
        arrays.scores = _concept_scores(args, acts, names)
    rows = labeler.label_arrays(acts, arrays)
    columns = list(labeler.array_columns)
    if metric_names:
        columns += _score_labels(rows, acts, concepts, names, metric_names, columns, args.alpha)
    for r in rows:
        r.pop("formula", None)
        if isinstance(r.get("top5"), list):
            r["top5"] = "|".join(map(str, r["top5"]))
    return write_csv(args.out, rows, columns)


def _array_labeler(args):
    """The labeler of ``label --method`` with the INVERT flags' settings; an unknown method, or ``--hierarchy`` for a
    method that reads no concept labels, is a UserError."""
    from lwtakit.config import DissectionConfig
    from lwtakit.labelers.base import array_methods

    methods = array_methods()
    if args.method not in methods:
        raise UserError(f"unknown method {args.method!r}; choose one of {', '.join(methods)}")
    labeler = methods[args.method].for_array_method(args.method, DissectionConfig(invert=_invert_config(args)))
    if args.hierarchy and not _reads_concept_labels(labeler):
        readers = [m for m, cls in methods.items() if _reads_concept_labels(cls)]
        raise UserError(f"--hierarchy expands binary concept labels; it applies to --method {' | '.join(readers)}")
    return labeler


def _reads_concept_labels(labeler) -> bool:
    from lwtakit.labelers.base import CONCEPT_LABELS

    return CONCEPT_LABELS in labeler.needs


def _concept_scores(args, acts: np.ndarray, names: list[str]) -> np.ndarray:
    """``--concept-scores``: float [N, K] image-concept similarities, one row per image and column per name."""
    if args.concept_scores is None:
        raise UserError(f"method {args.method} needs --concept-scores P.npy (float [N, K] image-concept similarity)")
    scores = _load_npy(args.concept_scores, "concept scores")
    _check_concepts(acts, scores, names, args.concept_scores)
    _check_finite(scores, args.concept_scores, "concept scores")
    return scores


def _expand_labels(labels: np.ndarray, names: list[str], hierarchy) -> tuple[np.ndarray, list[str]]:
    """Concept labels and names with the hierarchy's ancestors added (:mod:`lwtakit.hierarchy`)."""
    from lwtakit.hierarchy import expand

    names, membership = hierarchy.bind(names)
    return expand(labels, membership), names


def _metric_names(args) -> list[str]:
    """``--metrics`` (comma-separated NeuronEval names, default all) and ``--alpha``, checked."""
    from lwtakit.evaluation.metrics import check_alpha, parse_metrics

    check_alpha(args.alpha)
    return parse_metrics(args.metrics)


def _load_concept_labels(path: str, acts: np.ndarray, names: list[str]) -> np.ndarray:
    import numpy as np

    labels = _load_npy(path, "concept labels")
    _check_concepts(acts, labels, names, path)
    if labels.dtype != bool and not np.isin(labels, (0, 1)).all():
        raise UserError(f"concept labels {path} must be boolean (or 0/1)")
    if not labels.any():  # every unit would get an empty label and NaN scores
        raise UserError(f"concept labels {path} are all false: no concept occurs in any image")
    return labels.astype(bool)


def _score_labels(rows: list[dict], acts: np.ndarray, concepts: np.ndarray, names: list[str],
                  metric_names: list[str], taken: list[str], alpha: float) -> list[str]:
    """Add to every labelled row one score per metric of its unit for its label's concept vector (an INVERT
    row's formula, else the concept named by the label); unlabelled rows get no value. A metric whose name is
    already a column (INVERT's ``auc``) is written as ``neuroneval_<name>``. Returns the new column names."""
    import torch

    from lwtakit.evaluation.label_vectors import label_vectors
    from lwtakit.evaluation.metrics import score_columns

    labelled = [r for r in rows if r.get("label")]
    C = torch.from_numpy(concepts)
    vectors = [r["formula"].evaluate(C) if r.get("formula") is not None else label_vectors([r["label"]], C, names)[:, 0]
               for r in labelled]
    units = [int(r["unit"]) for r in labelled]
    columns = []
    for name in metric_names:
        column = f"neuroneval_{name}" if name in taken else name
        columns.append(column)
        if not labelled:
            continue
        values = score_columns(name, acts[:, units], torch.stack(vectors, 1), alpha=alpha)
        for r, v in zip(labelled, values.tolist(), strict=True):
            r[column] = v
    return columns


def _check_concepts(acts: np.ndarray, matrix: np.ndarray, names: list[str], path: str) -> None:
    if matrix.ndim != 2 or matrix.shape[0] != acts.shape[0]:
        raise UserError(f"{path} has shape {matrix.shape}; it needs one row per image of the activations "
                        f"({acts.shape[0]}) and one column per concept")
    if matrix.shape[1] != len(names):
        raise UserError(f"{path} has {matrix.shape[1]} concept columns but the names file has {len(names)} distinct "
                        "names (blank lines and repeated names are dropped); give one unique name per column")


# -------------------------------------------------------------------------------------------- sanity
def _unit_labels(path: str, concepts: np.ndarray, names: list[str], n_units: int):
    """Units and their label vectors ``[N, U]`` from a labels.csv (columns ``unit``, ``label``; rows without a
    label are skipped)."""
    import torch

    from lwtakit.evaluation.label_vectors import label_vectors
    from lwtakit.io import read_table

    rows = read_table(path, "labels file", required=("unit", "label"), integers=("unit",))
    if not rows:
        raise UserError(f"labels file {path} has no rows; give a labels.csv written by analyze.py label")
    layers = {r.get("layer") for r in rows}
    if len(layers) > 1:
        raise UserError(f"labels file {path} has units of {len(layers)} layers; keep the rows of one layer")
    rows = [r for r in rows if r["label"]]
    if not rows:
        raise UserError(f"labels file {path} has no labelled unit")
    units = [int(r["unit"]) for r in rows]
    bad = [u for u in units if not 0 <= u < n_units]
    if bad:
        raise UserError(f"labels file {path} names unit {bad[0]}, but the activations have {n_units} units")
    return units, label_vectors([r["label"] for r in rows], torch.from_numpy(concepts), names)


def cmd_sanity(args) -> Path:
    """NeuronEval's missing/extra-labels tests of the label metrics on these activations and concepts."""
    import numpy as np

    from lwtakit.evaluation.sanity import SanityConfig, sanity_check
    from lwtakit.io import check_output_file, write_csv

    check_output_file(args.out)
    config = SanityConfig(metrics=tuple(_metric_names(args)), alpha=args.alpha, repeats=args.repeats,
                          protocol=args.protocol,
                          seed=args.seed)
    acts = _load_activations(args.activations)
    names = _read_names(args.concept_names)
    concepts = _load_concept_labels(args.concept_labels, acts, names)
    units, vectors = (None, None) if args.labels is None else _unit_labels(args.labels, concepts, names,
                                                                             acts.shape[1])
    result = sanity_check(acts.astype(np.float64), concepts, config, units=units, label_vectors=vectors)
    return write_csv(args.out, result.as_dicts(), ["metric", "missing_decrease", "extra_decrease", "passes"])


# ------------------------------------------------------------------------------------------- explain
def cmd_explain(args) -> list[dict]:
    """Print the predicted class, the layer, where its labels come from and its active units for one image."""
    from lwtakit.checkpoint import load_model, resolve_run
    from lwtakit.explain import default_layer, explain

    device = _device(args.device)
    run_dir = None
    if args.ckpt:
        run_dir, ckpt = resolve_run(args.ckpt)
        # a checkpoint inside a run folder (RUN/checkpoints/X.ckpt) belongs to that run
        run_dir = run_dir or (ckpt.resolve().parent.parent if ckpt.resolve().parent.name == "checkpoints" else None)
        loaded = load_model(str(ckpt))
    else:
        loaded = load_model(args.model)
    x = _explain_image(args.image, loaded)
    layer = args.layer or default_layer(loaded.model)
    labels = _explain_labels(args, layer, run_dir)
    result = explain(loaded.model.to(device), x, layer, labels=labels.labels, top=args.top, device=device)
    if result.probs is not None:
        k = int(result.probs.argmax())
        name = loaded.class_names[k] if k < len(loaded.class_names) else f"class {k}"
        print(f"prediction: {name} (probability {float(result.probs[k]):.3f})")
    print(f"layer: {layer} ({_layer_note(args, loaded.model, layer)}); {result.active} of {result.units} units "
          "active")
    print(f"labels: {labels.origin}")
    print(f"{'unit':>6} {'activation':>11}  label")
    for r in result.rows:
        print(f"{r['unit']:>6} {r['activation']:>11.4f}  {r.get('label') or ''}")
    if len(result.rows) < args.top:
        print(f"({len(result.rows)} rows, not --top {args.top}: only {result.active} of the layer's {result.units} "
              f"units are active on this image{_active_rule(loaded.model, layer)})")
    return result.rows


# Smallest image side explain accepts: below it there is nothing for the network to see once upscaled.
MIN_IMAGE_SIDE = 8


def _explain_image(path: str, loaded):
    """The image file ``path`` as the network's input: [C, H, W] in [0, 1] by the file's own bit depth (8-bit,
    16-bit, 32-bit float in [0, 1]), resized to the network's input size; an image upscaled to it is said."""
    import torch
    from PIL import UnidentifiedImageError

    from lwtakit.data.folders import ImageTooLarge

    if Path(path).is_dir():
        raise UserError(f"--image {path} is a folder; give one image file")
    if not Path(path).is_file():
        raise UserError(f"image {path} does not exist")
    try:
        x = _image_array(path, loaded.in_chans, loaded.img_size)
    except ImageTooLarge as exc:
        raise UserError(f"{exc}; shrink the image first") from None
    except (UnidentifiedImageError, OSError):
        raise UserError(f"{path} is not a readable image file") from None
    x = torch.from_numpy(x)
    return x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)


def _image_array(path: str, channels: int, side: int):
    """The image's pixels as float32 [H, W] (one channel) or [H, W, 3] in [0, 1], resized to ``side``. Images of
    more than 8 bits per sample (PIL modes I;16, I, F) are scaled by their own range: PIL's conversion to 8 bits
    clips every value above 255, which turned a 16-bit image white."""
    import warnings

    import numpy as np
    from PIL import Image

    from lwtakit.data.folders import ImageTooLarge, open_image

    with warnings.catch_warnings():  # as open_image: a decompression bomb is refused before decoding
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                mode, size = im.mode, im.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageTooLarge(f"{path} is too large to decode safely ({exc})") from None
    if min(size) < MIN_IMAGE_SIDE:
        raise UserError(f"image {path} is {size[0]}x{size[1]} pixels; explain needs at least {MIN_IMAGE_SIDE} on "
                        f"each side (the network sees {side}x{side}): give a larger image")
    if min(size) < side:
        print(f"note: image {path} is {size[0]}x{size[1]}, upscaled to the network's {side}x{side}",
              file=sys.stderr)
    if mode.startswith("I;16") or mode in ("I", "F"):
        with Image.open(path) as im:
            raw = np.asarray(im).astype(np.float64)
        top = {"F": 1.0, "I": 65535.0 if raw.max() <= 65535 else 2.0**32 - 1}.get(mode, 65535.0)
        if mode == "F" and (raw.min() < 0 or raw.max() > 1):
            raise UserError(f"image {path} holds floats outside [0, 1]; save it as an 8- or 16-bit image")
        gray = Image.fromarray((raw / top).astype(np.float32), "F").resize((side, side), Image.BILINEAR)
        x = np.clip(np.asarray(gray, dtype=np.float32), 0, 1)
        return x if channels == 1 else np.repeat(x[..., None], 3, axis=2)
    img = open_image(path, "L" if channels == 1 else "RGB").resize((side, side), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _layer_note(args, model, layer: str) -> str:
    """Why this layer: named by --layer, the last LWTA layer, or a dense network's last activation."""
    from lwtakit.lwta import lwta_layers

    if args.layer:
        return "--layer"
    if lwta_layers(model):
        return "the last LWTA layer; --layer names another"
    return "the network has no LWTA layer: its last activation layer; --layer names another"


def _active_rule(model, layer: str) -> str:
    """What makes a unit of ``layer`` active, for the note on fewer rows than --top."""
    U = getattr(model.get_submodule(layer), "U", None)
    if callable(getattr(model.get_submodule(layer), "winner_mask", None)) and U and U > 1:
        return f": one winner in each block of {U}"
    return ": those with a positive activation"


def _explain_labels(args, layer: str, run_dir: Path | None):
    """The labels of ``layer``: from --labels, else the run folder's labels.csv (its latest dissection), else none,
    with a line saying which (:func:`lwtakit.explain.read_unit_labels`)."""
    from lwtakit.explain import UnitLabels, read_unit_labels

    if args.labels:
        return read_unit_labels(args.labels, layer, layer_given=args.layer is not None)
    if run_dir is not None and (run_dir / "labels.csv").is_file():
        found = read_unit_labels(run_dir / "labels.csv", layer, layer_given=False)
        return UnitLabels(found.labels, f"{found.origin} (the run's own; --labels FILE takes others)")
    where = f"the run folder {run_dir} has no labels.csv" if run_dir else "no run folder holds this model"
    spec = args.ckpt or args.model
    return UnitLabels({}, f"none ({where}); label the units with  analyze.py dissect "
                          f"{'--ckpt' if args.ckpt else '--model'} {spec} --out DIR  and give --labels DIR")


# ------------------------------------------------------------------------------------------- compare
def cmd_compare(args) -> Path:
    from lwtakit.arms_compare import parse_arm
    from lwtakit.compare import CompareOptions, compare

    _check_layer_names(args.layers)
    arms = [parse_arm(a) for a in args.arm or []]
    return compare(args.runs, args.out, CompareOptions(probe_size=args.probe_size, eval_size=args.eval_size,
                                                       seed=args.seed, device=_device(args.device),
                                                       layers=args.layers, passes=args.passes,
                                                       precision=args.precision,
                                                       force=args.force, arms=arms, reference=args.reference,
                                                       at_accuracy=args.at_accuracy))


# ------------------------------------------------------------------------------------------- verdict
def _primary(text: str) -> tuple[str, str]:
    """``--primary LAYER:METRIC`` (split at the last colon: layer names may hold dots, not colons)."""
    layer, sep, metric = text.rpartition(":")
    if not (sep and layer and metric):
        raise argparse.ArgumentTypeError(f"give the primary endpoint as LAYER:METRIC, got {text!r}")
    return layer, metric


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names (``--metrics``), none empty."""
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"give names separated by commas, got {text!r}")
    return names


def cmd_verdict(args) -> Path:
    from lwtakit.evaluation.seeds import SeedVerdictOptions, seed_verdict
    from lwtakit.evaluation.unit_scores import read_unit_scores
    from lwtakit.report.verdict import write_verdict

    options = SeedVerdictOptions(reference=args.reference, margin=args.margin, alpha=args.alpha_level,
                                 primary=args.primary, metrics=args.metrics, n_resamples=args.resamples,
                                 seed=args.seed)
    result = seed_verdict(read_unit_scores(args.scores), options)
    for line in [r.sentence(options.margin) for r in result.rows if r.family == "primary"] + result.notes:
        print(line)
    return write_verdict(result, args.out, source=args.scores)


# ---------------------------------------------------------------------------------------------- main
def _add_precision_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", type=int, choices=(32, 64), default=32,
                        help="bits of the network's floats: 64 gives the same labels and figures on any CPU "
                             "(float32 sums differ between instruction sets and thread counts), at a slower "
                             "forward pass (default: 32)")


def _subcommand(sub, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose one-line summary is both its entry in ``analyze.py --help`` and its own description."""
    return sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")


def _add_dissect(sub) -> None:
    """``dissect``: what to dissect and how; the defaults are the ``dissection`` schema's
    (:class:`lwtakit.config.DissectionConfig`), the one place they live."""
    from lwtakit.config import DissectionConfig

    default = DissectionConfig()
    d = _subcommand(sub, "dissect", "label every unit of chosen layers by every chosen method; HTML report")
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="checkpoint written by train.py, or its run folder")
    src.add_argument("--model", help="torchvision:NAME (ImageNet weights)")
    d.add_argument("--layers", nargs="+", help="module names (default: last stage activations + classifier)")
    d.add_argument("--methods", nargs="+", default=list(default.methods),
                   help="registered labelers to run; built in: invert clip_dissect iou captions")
    d.add_argument("--probe", help="probe images: synthetic | mnist:PATH | cifar10:ROOT | imagefolder:ROOT | "
                                   "folder:PATH (default: the validation split the checkpoint was trained on)")
    d.add_argument("--probe-size", type=int_at_least(1),
                   help="probe images used, a seeded subset; at most the split's images (default: all of them, up "
                        "to 1000)")
    d.add_argument("--concepts", default=default.concepts,
                   help="concept set for CLIP: a text file or a built-in: words20k words10k words3k (common English "
                        "words) imagenet cifar100 cifar10 mnist places365[:PATH] classes (the probe's) synthetic")
    d.add_argument("--drop-class-words", action="store_true",
                   help="remove the concepts too close to a class name (the name, its last word, their plural), "
                        "for final-layer evaluation; the removed count is printed")
    d.add_argument("--hierarchy", metavar="FILE", help=HIERARCHY_HELP)
    d.add_argument("--pca", type=int_at_least(0), default=default.pca_components,
                   help="also label both poles of the top-k principal directions (conv layers: fitted per "
                        "position, Dey et al. 2020) and add completeness curves")
    _add_invert_flags(d)
    _add_clip_flags(d, default)
    _add_pass_flags(d, default)
    d.add_argument("--out", required=True, help="report folder: report.html and labels.csv")


def _add_clip_flags(d: argparse.ArgumentParser, default) -> None:
    """dissect's CLIP and captioning flags (defaults: ``default``, the schema's)."""
    d.add_argument("--clip-model", default=default.clip.model,
                   help="open_clip model name, or local-dir:FOLDER (open_clip_config.json + weights, no network)")
    d.add_argument("--clip-pretrained", help="CLIP weights: an open_clip tag such as openai (downloaded once, needs "
                                             "network), or a weights FILE")
    d.add_argument("--clip-cache", help="folder for cached CLIP embeddings (default: none, embeddings recomputed)")
    d.add_argument("--clip-similarity", "--clip-method", dest="clip_similarity",
                   default=default.clip_dissect.similarity, choices=SIMILARITIES,
                   help="CLIP-Dissect similarity function (clip_dissect, captions)")
    d.add_argument("--caption-model", default=default.captions.model, help="open_clip CoCa model (captions)")
    d.add_argument("--caption-pretrained", default=default.captions.pretrained,
                   help="CoCa weights: tag, file or local-dir: (captions)")


def _add_pass_flags(d: argparse.ArgumentParser, default) -> None:
    """dissect's flags of how the network is run and what the report shows (defaults: the schema's)."""
    d.add_argument("--mode", "--inference", dest="mode", choices=["mc", "sample", "argmax"], default=default.mode,
                   help="LWTA network dissected as: mc = mean of --passes seeded stochastic passes (the function it "
                        "is evaluated as), sample = one seeded pass, argmax = most likely winners (default: mc)")
    d.add_argument("--passes", type=_passes, default=default.passes,
                   help=f"stochastic passes averaged in mc mode, at most {MAX_PASSES}")
    d.add_argument("--heldout", type=float, default=default.heldout.fraction, metavar="FRACTION",
                   help="choose labels on this seeded fraction of the probe set and score them on the rest "
                        "(0: label and score on all of it, in-sample; default: %(default)s)")
    d.add_argument("--top-images", type=int_at_least(1), default=default.top_images,
                   help="top images shown per unit in the report")
    d.add_argument("--grid-units", type=int_at_least(0), default=default.grid_units,
                   help="best-scoring units per layer shown with their top images (0: every unit)")
    d.add_argument("--batch-size", type=int_at_least(1), default=default.batch_size, help="images per forward pass")
    d.add_argument("--seed", type=int, default=0, help="seed of the probe subset, held-out split and LWTA sampling")
    d.add_argument("--device", default="auto", help=DEVICE_HELP)
    d.add_argument("--devices", type=int_at_least(1), default=1,
                   help="processes on this machine (GPUs with --device cuda): each records its shard of the probe "
                        "set, rank 0 labels and writes; the labels equal one process's (default: 1)")
    d.add_argument("--num-nodes", type=int_at_least(1), default=1, help="machines, each running --devices processes")
    _add_precision_flag(d)
    d.add_argument("--memory-budget", type=float_at_least(0), metavar="GIB", default=default.memory_budget_gb,
                   help="host memory the recorded activations may take; above it they are kept in a memory-mapped "
                        "temporary file (default: no limit)")


def _add_label(sub) -> None:
    """``label``: label activations you already have, by a method of the labeler registry (the help names the
    built-in ones: listing the registry would import torch before --help answers)."""
    lab = _subcommand(sub, "label", "label activations you already have (A.npy [N, C])")
    lab.add_argument("--activations", required=True, help="A.npy: float [N images, C units]")
    lab.add_argument("--method", required=True, help="invert | " + " | ".join(SIMILARITIES))
    lab.add_argument("--concept-labels", help="bool [N, K] .npy (invert)")
    lab.add_argument("--concept-scores", help="float [N, K] .npy image-concept similarity (CLIP functions)")
    lab.add_argument("--concept-names", required=True, help="text file, one concept a line")
    lab.add_argument("--hierarchy", metavar="FILE", help=HIERARCHY_HELP)
    _add_invert_flags(lab)
    lab.add_argument("--metrics", help="also score each unit's label by these NeuronEval metrics (comma-separated "
                     "names, or all); needs --concept-labels; a name already taken (auc) becomes neuroneval_<name>")
    lab.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                     help="top fraction of images a unit fires on (default %(default)s, NeuronEval's)")
    lab.add_argument("--out", required=True, help="labels.csv to write (unit, label, score, ...)")


def _add_sanity(sub) -> None:
    san = _subcommand(sub, "sanity", "NeuronEval's missing/extra-labels tests of the label metrics on your data")
    san.add_argument("--activations", required=True, help="A.npy [N, C]")
    san.add_argument("--concept-labels", required=True, help="bool [N, K] .npy")
    san.add_argument("--concept-names", required=True, help="text file, one concept a line")
    san.add_argument("--labels", help="labels.csv (unit, label) whose labels are tested; default: each unit's best "
                     "concept by the metric under test")
    san.add_argument("--metrics", help="comma-separated metric names (default: all)")
    san.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                     help="top fraction of images a unit fires on (default %(default)s, NeuronEval's)")
    san.add_argument("--protocol", choices=("neuroneval", "averaged"), default="neuroneval",
                     help="neuroneval: one perturbation per unit and test (NeuronEval's protocol, default); "
                     "averaged: the mean of --repeats perturbations before the threshold (a gentler test)")
    san.add_argument("--repeats", type=int, default=None,
                     help="perturbations averaged per unit with --protocol averaged (default 10 there)")
    san.add_argument("--seed", type=int, default=0, help="seed of the perturbations")
    san.add_argument("--out", required=True, help="sanity.csv: metric,missing_decrease,extra_decrease,passes")


def _add_explain(sub) -> None:
    e = _subcommand(sub, "explain", "the predicted class and the winning units of a layer for one image, with "
                                    "their labels")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="checkpoint written by train.py, or its run folder")
    src.add_argument("--model", help="torchvision:NAME (ImageNet weights)")
    e.add_argument("--image", required=True, help="image file (resized to the network's input size)")
    e.add_argument("--layer", help="layer to explain (default: the last LWTA layer; in a dense network the last "
                                   "activation layer)")
    e.add_argument("--labels", help="labels.csv of dissect or label (default: the run folder's labels.csv, its "
                                    "latest dissection, when the checkpoint sits in a run folder)")
    e.add_argument("--top", type=int_at_least(1), default=20, help="most units listed")
    e.add_argument("--device", default="auto", help=DEVICE_HELP)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Label, explain and compare the units of vision networks.")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_dissect, _add_label, _add_sanity, _add_explain):
        add(sub)

    from lwtakit.config import DissectionConfig

    c = _subcommand(sub, "compare", "put runs (e.g. sparse and dense) side by side; HTML report + CSV")
    c.add_argument("runs", nargs="*", help="run folders, checkpoints or sweep folders (folders of run folders); runs "
                                           "that differ only in their seed form one arm")
    c.add_argument("--arm", action="append", metavar="NAME=RUN,RUN",
                   help="an arm named explicitly, its runs comma-separated (repeatable)")
    c.add_argument("--reference", metavar="ARM", help="arm the differences are taken from (default: the first dense)")
    c.add_argument("--at-accuracy", type=float, metavar="X",
                   help="per run, use the training-time dissection of the first epoch whose validation accuracy "
                        "reaches X for the per-unit table (default: compare's dissection of the final checkpoint)")
    c.add_argument("--probe-size", type=int_at_least(1),
                   help="validation images for sparsity and labels, a seeded subset of each run's own validation "
                        "split; at most its images (default: all of them, up to 1000)")
    c.add_argument("--eval-size", type=int_at_least(1),
                   help="test images for accuracy per inference mode, a seeded subset of each run's own test split; "
                        "at most its images (default: all of them, up to 1000)")
    c.add_argument("--seed", type=int, default=0,
                   help="seed of the probe and test subsets, the held-out split and LWTA sampling")
    c.add_argument("--layers", nargs="+", metavar="LAYER",
                   help="layers labelled in every run (default: each run's last stage and classifier); e.g. one "
                        "activation per stage, to see where the planted concepts are found")
    c.add_argument("--passes", type=_passes, default=DissectionConfig.passes,
                   help="mc passes an LWTA network is dissected with (labels, sparsity, split-half reliability; "
                        "the report says how many would reach reliability 0.95; default %(default)s)")
    c.add_argument("--device", default="auto", help=DEVICE_HELP)
    _add_precision_flag(c)
    c.add_argument("--force", action="store_true",
                   help="compare runs whose data differ (data set, image size, synthetic target or second object): "
                        "the difference becomes the report's first line (default: refuse)")
    c.add_argument("--out", required=True,
                   help="report folder: report.html, compare.csv, arms.csv, unit_scores.csv, sanity.csv, "
                        "verdict.csv, verdict.html, plots/")

    v = _subcommand(sub, "verdict", "seed-level verdict of arms of seeded runs from unit_scores.csv: differences "
                                    "with intervals, tests, equivalence, trend over U")
    v.add_argument("--scores", required=True, help="unit_scores.csv: arm,seed,run,layer,unit,metric,value[,u]")
    v.add_argument("--reference", required=True, metavar="ARM", help="the arm every other is compared with")
    v.add_argument("--margin", type=float, default=0.05, help="equivalence margin (TOST), in the metric's units")
    v.add_argument("--alpha-level", type=float, default=0.05, help="significance level of every test")
    v.add_argument("--primary", type=_primary, metavar="LAYER:METRIC",
                   help="pre-declared primary endpoint (default: heldout_correlation_disattenuated of the last layer "
                        "that has it, else heldout_correlation)")
    v.add_argument("--metrics", type=_names, metavar="M,M", help="the metrics tested besides the primary endpoint's "
                   "(default: every metric of the table; compare tests the verdict metrics that pass the sanity tests)")
    v.add_argument("--resamples", type=int_at_least(1), default=9999, help="permutations of the trend test over U")
    v.add_argument("--seed", type=int, default=0, help="seed of the trend test's permutations")
    v.add_argument("--out", required=True, help="folder: verdict.csv and verdict.html")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_third_party()
    try:
        out = {"dissect": cmd_dissect, "label": cmd_label, "explain": cmd_explain, "compare": cmd_compare,
               "sanity": cmd_sanity, "verdict": cmd_verdict}[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C: every output is staged or atomic, so nothing half-written stays behind
        print(f"error: interrupted; analyze.py {args.command} wrote nothing", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: no space left on the device of --out{where}; free some space or give another --out "
              "(nothing was written)", file=sys.stderr)
        return 2
    if isinstance(out, Path):
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The scale part of ``benchmarks/dissect_speed.py`` (``--part scale``): dissection at ImageNet size (issue 12).

A full-width torchvision ResNet-50 and an open_clip ViT-B-16 image + text encoder, both with random weights
(timing needs no trained ones), a synthetic probe of N images with 1,000 classes, a 20,000-word generated
concept set and a random hierarchy of 473 hypernyms (:mod:`scale_data`). Stages, each timed, with its peak
host RSS (``VmHWM`` after resetting it through ``/proc/self/clear_refs``) and peak device memory:

* ``bare``: ResNet-50 forward passes and CLIP image-encoder passes over the probe, nothing recorded (the
  denominator of the ratio);
* ``record``: :func:`lwtakit.dissect.record` of layer1-4 and fc;
* ``text``: the concept set's CLIP text embeddings (:func:`lwtakit.clip.embed_texts_cached`, fresh cache);
* ``dissect``: :func:`lwtakit.dissect.dissect` with that recording: CLIP image embeddings, CLIP-Dissect
  soft-WPMI (Oikarinen & Weng 2023) against the words and INVERT (Bykov et al. 2023) against the classes and
  their hypernyms (1,473 concepts), in-sample, as the two papers label;
* ``INVERT search``: INVERT's beam search (length 3, beam 5) over planted activations of ``--invert-units``
  units x 1,473 concepts x ``--invert-n`` images, twice: lwtakit's default (parsimony: a longer formula must
  gain AUC and pass a term test, so the work per unit depends on the data) and the reference of Bykov et al.
  (Alg. 1, no parsimony: every unit searched to length 3, as the authors' explainer does); with
  ``--invert-timed`` < units only that many units are searched and the time is extrapolated linearly.

(everything) = record + text + dissect; the ratio divides it by the bare passes of both networks.
``--scale-record-only`` runs the recording alone, for its memory at large N (small images keep it short on a CPU).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import threading
import time
from collections.abc import Callable

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: nothing to download, never try

LAYERS = ["layer1", "layer2", "layer3", "layer4", "fc"]


def add_scale_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale (ResNet-50 + CLIP ViT-B-16 at ImageNet size, random weights)")
    g.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    g.add_argument("--scale-n", type=int, default=200, help="probe images N (GPU figure: 50000; 0: search only)")
    g.add_argument("--scale-img", type=int, default=224, help="image side")
    g.add_argument("--scale-batch", type=int, default=64)
    g.add_argument("--scale-words", type=int, default=20000, help="generated concept words (CLIP-Dissect)")
    g.add_argument("--scale-classes", type=int, default=1000)
    g.add_argument("--scale-groups", type=int, default=473, help="hypernym groups above the classes")
    g.add_argument("--scale-clip", default="ViT-B-16", help="open_clip model name or config json (random weights)")
    g.add_argument("--scale-memory-budget", type=float, default=None, metavar="GIB",
                   help="host memory the recording may take before it spills to a memory-mapped file (default: none)")
    g.add_argument("--scale-record-only", action="store_true",
                   help="only the recording of ResNet-50's five layers (its memory against --scale-memory-budget); "
                        "no CLIP, no search")
    g.add_argument("--invert-n", type=int, default=50000, help="images of the INVERT search (0: skip it)")
    g.add_argument("--invert-units", type=int, default=512)
    g.add_argument("--invert-timed", type=int, default=0, help="units actually searched (0: all)")
    g.add_argument("--invert-noise", type=float, default=0.1, help="noise sd of the planted units (signal 1)")


class _Stages:
    """Wall time, peak host RSS and peak device memory per stage."""

    def __init__(self, device: torch.device):
        self.device = device
        self.result: dict = {}
        self.peak_mib = 0.0
        self.peak_anon_mib = 0.0
        self.build_peak_mib = 0.0
        self.resettable = False

    def start(self) -> None:
        """Before the first stage: keep the peak of building the models and the probe (never reset before)."""
        self.build_peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.resettable = _reset_peak_rss()

    def run(self, name: str, fn: Callable):
        _reset_peak_rss()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with _AnonPeak() as anon:
            out = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.result[f"{name} peak device MiB"] = torch.cuda.max_memory_allocated() / 2**20
        seconds = time.perf_counter() - t0
        status = _proc_status()
        self.peak_mib = max(self.peak_mib, status.get("VmHWM", 0.0))
        self.peak_anon_mib = max(self.peak_anon_mib, anon.peak_mib)
        self.result[f"{name} s"] = seconds
        self.result[f"{name} peak RSS MiB"] = status.get("VmHWM", float("nan"))
        self.result[f"{name} peak anonymous RSS MiB"] = anon.peak_mib
        return out, seconds


class _AnonPeak:
    """The peak anonymous RSS (``RssAnon``) during a block, sampled every 20 ms by a thread: the memory a recording
    really holds; VmHWM also counts the pages of a memory-mapped (spilled) recording, which the OS can drop."""

    def __enter__(self):
        self.peak_mib, self._stop = _proc_status().get("RssAnon", 0.0), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_mib = max(self.peak_mib, _proc_status().get("RssAnon", 0.0))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, _proc_status().get("RssAnon", 0.0))


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _mapped_from_file(tensor: torch.Tensor) -> bool:
    """Whether the tensor's memory is a mapping of a (deleted) file, as a recording over its budget is (Linux)."""
    ptr = tensor.untyped_storage().data_ptr()
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                fields = line.split(maxsplit=5)
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                if lo <= ptr < hi:
                    return len(fields) == 6 and fields[5].strip().endswith("(deleted)")
    except OSError:
        pass
    return False


def _proc_status() -> dict[str, float]:
    """VmHWM (peak RSS), VmRSS and RssAnon of this process in MiB (Linux; empty elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon"):
            out[key] = float(value.split()[0]) / 1024
    return out


def recording_bytes(rec) -> int:
    """Bytes of the [N, C] / [N] tensors a :class:`~lwtakit.recording.Recording` keeps, each storage once
    (``acts_max`` of a non-conv layer is ``acts`` itself)."""
    seen: dict[int, int] = {}
    for field in (rec.acts, rec.acts_max, rec.firing_per_image, rec.active_per_image):
        for t in field.values():
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def recording_formula(n: int, channels: dict[str, int], spatial: dict[str, bool]) -> int:
    """Bytes of a recording by the formula: per layer N x C x 4 bytes x (3 for a conv layer: acts, acts_max,
    firing_per_image; 2 otherwise: acts_max is acts) + N x 4 (active_per_image)."""
    return sum(n * c * 4 * (3 if spatial[name] else 2) + n * 4 for name, c in channels.items())


def _bare(model_fn: Callable, loader, device: torch.device) -> Callable:
    def run():
        with torch.inference_mode():
            for x, _ in loader:
                model_fn(x.to(device, non_blocking=True))
    return run


def _models(args, device: torch.device):
    import torchvision

    from lwtakit.clip import load_clip

    torch.manual_seed(0)
    resnet = torchvision.models.resnet50(weights=None).eval().to(device)
    clip = load_clip(args.scale_clip, None, device=str(device), batch_size=args.scale_batch)
    return resnet, clip


def _warm_up(resnet, clip, probe, device: torch.device) -> None:
    """One small batch through each network (cuDNN autotuning, lazy allocations) before any timing."""
    x = torch.stack([probe[i][0] for i in range(min(4, len(probe)))]).to(device)
    with torch.inference_mode():
        resnet(x)
        clip.model.encode_image(clip.preprocess(x))


def bench_scale(args) -> dict:
    from benchmarks.scale_data import SyntheticImages, random_hierarchy

    device = torch.device(args.device)
    probe = SyntheticImages(args.scale_n, args.scale_img, args.scale_classes)
    hierarchy = random_hierarchy(probe.class_names, args.scale_groups)
    st = _Stages(device)
    out = {"device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
           "threads": torch.get_num_threads()}
    if args.scale_record_only:
        out.update(_record_only(args, device, probe, st))
        out.update(_peaks(st, device))
        return out
    if args.scale_n > 0:  # returns without its models and recording
        out.update(_dissection(args, device, probe, hierarchy, st))
    else:
        st.start()
    if args.invert_n > 0:
        out.update(_invert_search(args, hierarchy, probe.class_names, st))
    out.update(_peaks(st, device))
    return out


def _dissection(args, device: torch.device, probe, hierarchy, st: _Stages) -> dict:
    """Bare passes, then record + text embeddings + dissect of ResNet-50's five layers, each a timed stage."""
    from benchmarks.scale_data import pronounceable_words
    from lwtakit.clip import embed_texts_cached
    from lwtakit.dissect import ConceptSource, DissectOptions, dissect, record

    resnet, clip = _models(args, device)
    words = pronounceable_words(args.scale_words)
    loader = torch.utils.data.DataLoader(probe, batch_size=args.scale_batch, shuffle=False)
    _warm_up(resnet, clip, probe, device)
    st.start()
    _, t_resnet = st.run("bare ResNet-50", _bare(resnet, loader, device))
    _, t_clip = st.run("bare CLIP image encoder", _bare(lambda x: clip.model.encode_image(clip.preprocess(x)),
                                                        loader, device))
    budget = None if args.scale_memory_budget is None else int(args.scale_memory_budget * 2**30)
    options = DissectOptions(batch_size=args.scale_batch, device=device, progress=False, mode=None, heldout=None,
                             memory_budget=budget)
    rec, t_rec = st.run("record (5 layers)", lambda: record(resnet, probe, LAYERS, options))
    with tempfile.TemporaryDirectory() as cache:  # a fresh cache: every embedding is computed
        _, t_text = st.run(f"text embedding ({len(words)} words)", lambda: embed_texts_cached(clip, words, cache))
        concepts = ConceptSource.from_dataset(probe, clip, words, cache, hierarchy=hierarchy)
        result, t_dissect = st.run("dissect (CLIP image embedding + labelers)", lambda: dissect(
            resnet, probe, LAYERS, ["clip_dissect", "invert"], concepts, options, recording=rec))
    out = _summary(args, rec, result, concepts)
    out.update(st.result)
    everything, bare = t_rec + t_text + t_dissect, t_resnet + t_clip
    out["CLIP image embedding s (in dissect)"] = result.seconds.get("clip_embed", float("nan"))
    out["CLIP-Dissect soft-WPMI s"] = result.seconds.get("clip_dissect", float("nan"))
    out["INVERT (length 1, 1,473 concepts) s"] = result.seconds.get("invert", float("nan"))
    out["everything s (record + text + dissect)"] = everything
    out["images/s (everything)"] = args.scale_n / everything
    out["ratio everything / bare (ResNet-50 + CLIP image encoder), target <= 1.2"] = everything / bare
    out["ratio (everything - text embedding) / bare"] = (everything - t_text) / bare
    return out


def _record_only(args, device: torch.device, probe, st: _Stages) -> dict:
    """The recording alone (ResNet-50, five layers): its bytes against the formula and the host budget, and where it
    ended (memory or a mapped file)."""
    import torchvision

    from lwtakit.dissect import DissectOptions, record

    torch.manual_seed(0)
    resnet = torchvision.models.resnet50(weights=None).eval().to(device)
    budget = None if args.scale_memory_budget is None else int(args.scale_memory_budget * 2**30)
    options = DissectOptions(batch_size=args.scale_batch, device=device, progress=True, mode=None, heldout=None,
                             memory_budget=budget)
    st.start()
    rec, seconds = st.run("record (5 layers)", lambda: record(resnet, probe, LAYERS, options))
    channels = {name: int(rec.acts[name].shape[1]) for name in LAYERS}
    return {"N": args.scale_n, "image side": args.scale_img, "images/s (record)": args.scale_n / seconds,
            "recording MiB (kept)": recording_bytes(rec) / 2**20,
            "recording MiB (formula)": recording_formula(args.scale_n, channels, rec.spatial) / 2**20,
            "host budget MiB": float("nan") if budget is None else budget / 2**20,
            "recording in a mapped file (over --scale-memory-budget)": _mapped_from_file(rec.acts[LAYERS[0]]),
            **st.result}


def _summary(args, rec, result, concepts) -> dict:
    channels = {name: int(rec.acts[name].shape[1]) for name in LAYERS}
    kept = recording_bytes(rec)
    return {"N": args.scale_n, "image side": args.scale_img,
            "CLIP": f"{args.scale_clip} (random weights)", "words": args.scale_words,
            "INVERT concepts": len(concepts.names),
            "units (5 layers)": sum(channels.values()), "rows labelled": len(result.table.rows),
            "recording MiB (kept)": kept / 2**20,
            "recording in a mapped file (over --scale-memory-budget)": _mapped_from_file(rec.acts[LAYERS[0]]),
            "recording MiB (formula)": recording_formula(args.scale_n, channels, rec.spatial) / 2**20,
            "recording MiB at N=50,000 (formula)": recording_formula(50000, channels, rec.spatial) / 2**20}


def _invert_search(args, hierarchy, class_names, st: _Stages) -> dict:
    """INVERT beam search (length 3, beam 5) over planted units, with lwtakit's default parsimony and as the
    reference (no parsimony: every unit searched to length 3); time extrapolated from ``--invert-timed`` units."""
    from benchmarks.scale_data import class_concepts, planted_units
    from lwtakit.labelers.invert import InvertConfig, label_units

    names, labels, membership = class_concepts(args.invert_n, hierarchy, class_names)
    acts, truth = planted_units(labels, membership, args.invert_units, noise=args.invert_noise)
    timed = args.invert_timed or args.invert_units
    configs = {"default": InvertConfig(max_length=3, beam=5)}
    configs["reference"] = configs["default"].without_parsimony()
    device = torch.device(args.device)  # the search runs where its inputs are
    where = f"cpu ({torch.get_num_threads()} threads)" if device.type == "cpu" else torch.cuda.get_device_name(device)
    out = {"INVERT search units x concepts x images": f"{args.invert_units} x {len(names)} x {args.invert_n}",
           "INVERT search device": where, "INVERT search units timed": timed}
    on_device = acts.to(device), labels.to(device)
    for tag, config in configs.items():
        rows, seconds = st.run(f"INVERT search {tag}", lambda config=config: label_units(
            *on_device, names, config, units=range(timed), progress=False))
        found = sum(bool(torch.equal(r["formula"].evaluate(labels), truth[:, r["unit"]])) for r in rows
                    if r["formula"] is not None)
        out[f"INVERT search {tag} s/unit"] = seconds / timed
        out[f"INVERT search {tag} s, all units" + (" (extrapolated)" if timed < args.invert_units else "")] = \
            seconds / timed * args.invert_units
        out[f"INVERT search {tag} planted formula found (same images), labels of length 3"] = \
            f"{found}/{timed}, {sum(r['length'] == 3 for r in rows)}/{timed}"
    return out


def _peaks(st: _Stages, device: torch.device) -> dict:
    out = {"peak host RSS MiB (max over stages, VmHWM)": st.peak_mib,
           "peak anonymous RSS MiB (max over stages, RssAnon sampled every 20 ms)": st.peak_anon_mib,
           "peak RSS MiB while building models + probe (ru_maxrss)": st.build_peak_mib}
    if not st.resettable:
        out["note"] = "/proc/self/clear_refs not writable: stage peaks are the process's peak so far"
    if device.type == "cuda":
        out["peak device MiB (max over stages)"] = max(v for k, v in st.result.items() if "device MiB" in k)
    return out

"""ConceptShapes: a procedurally generated image dataset with planted, known concepts.

Every image shows one object (optionally a second, smaller one) on a plain background. The object has
six attributes, each drawn uniformly and independently:

==========  ====================================================================================
shape       circle, square, triangle, cross, diamond, ring
colour      red, green, blue, yellow, purple, orange, cyan
pattern     plain, striped, dotted, checkered (the "off" pixels of a pattern are a dark shade of
            the object's colour, so the object's hue is the same everywhere on it)
size        small, large (object radius 0.12-0.15 vs 0.25-0.29 of the image side)
position    centre of the object on a 3x3 grid: top left, top, top right, left, center, right,
            bottom left, bottom, bottom right (grid points at 0.3, 0.5, 0.7 of the side, +/- jitter)
background  dark background, gray background, light background
==========  ====================================================================================

Each value is a text concept (``concept_names``, unique across attributes, readable so that CLIP can
embed it). The class label is the index of the value of one attribute (``target``, default ``shape``).
Images are deterministic functions of ``(seed, split, index)``: item ``i`` is drawn from its own numpy
Generator seeded by ``SeedSequence([seed, split_id, i])``, so any item costs O(1), does not depend on
which worker draws it or in which order, and ``attributes(i)`` / ``concept_matrix()`` need no drawing.
Some jitter (radius, centre, colour shade, background shade, pattern phase, uniform pixel noise)
keeps the task from being trivial while a small CNN still learns it in a few epochs.

Second object (``second_object=True``): a smaller object (radius 0.8 x the small range, size value
"small") with its own shape, colour and pattern, centred on a different grid point, drawn *in front
of* the main object (it can hide a part of the main object, never all of it). The class label always
refers to the main object. Concepts are *image-level*: a concept is present when the main or the second
object has it (e.g. "red" if either object is red), and its pixel mask is the union of the visible
pixels of the objects that have it. ``attributes(i)`` reports the
second object's values under keys ``second_shape``, ``second_colour``, ... .

Masks (``concept_masks``) follow Network Dissection (Bau et al., CVPR 2017, Sec. 2): object concepts
(shape, colour, pattern, size, position) cover the object's visible pixels, background concepts cover
every pixel that is not an object.

Augmentation note: random crops shift objects across position cells and horizontal flips swap
left/right, which would silently falsify the position concepts (and the class when ``target`` is
position), so training augmentation is never applied to this dataset (see ``lwtakit.data.augment``).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch
from torch.utils.data import Dataset

from lwtakit.data.registry import DataRequest, DatasetInfo, DatasetSource, register_dataset
from lwtakit.errors import UserError

ATTRIBUTES: dict[str, list[str]] = {
    "shape": ["circle", "square", "triangle", "cross", "diamond", "ring"],
    "colour": ["red", "green", "blue", "yellow", "purple", "orange", "cyan"],
    "pattern": ["plain", "striped", "dotted", "checkered"],
    "size": ["small", "large"],
    "position": [
        "top left", "top", "top right",
        "left", "center", "right",
        "bottom left", "bottom", "bottom right",
    ],
    "background": ["dark background", "gray background", "light background"],
}
"""Vocabulary: attribute -> its values (each value is a concept name)."""

PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.15),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "purple": (0.60, 0.15, 0.80),
    "orange": (1.00, 0.55, 0.05),
    "cyan": (0.10, 0.80, 0.85),
}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "dark background": (0.08, 0.08, 0.10),
    "gray background": (0.45, 0.45, 0.45),
    "light background": (0.85, 0.85, 0.82),
}
# Grid points of the position attribute (fractions of the side) and the object radius ranges.
GRID = (0.3, 0.5, 0.7)
CENTRE_JITTER = 0.02
RADIUS = {"small": (0.12, 0.15), "large": (0.25, 0.29)}  # small extent <= 0.3 side, large >= 0.4
SECOND_SCALE = 0.8
OFF_SHADE = 0.35  # brightness of a pattern's "off" pixels relative to the object colour
NOISE_STD = 0.03
SPLITS = {"train": 0, "val": 1, "test": 2}

# Per-channel mean / std of the default dataset (all attributes, 32 px, no second object), measured
# with ``ConceptShapes(size=4096).channel_stats()``; a test re-measures them.
MEAN = (0.452, 0.449, 0.439)
STD = (0.322, 0.316, 0.304)


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Inside-test of a unit-radius shape on coordinates already divided by the radius."""
    if shape == "circle":
        return dx * dx + dy * dy <= 1.0
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= 1.0) & (d2 >= 0.55 * 0.55)
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.8
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.0
    if shape == "triangle":
        # Apex up at -1, flat base at +0.6: the area centroid sits near the centre (y ~ +0.07).
        return (dy <= 0.6) & (np.abs(dx) <= (dy + 1.0) * np.tan(np.pi / 6))
    if shape == "cross":
        ax, ay = np.abs(dx), np.abs(dy)
        return ((ax <= 0.33) & (ay <= 1.0)) | ((ay <= 0.33) & (ax <= 1.0))
    raise ValueError(shape)


class ConceptShapes(Dataset):
    """Synthetic concept dataset; see the module docstring for the attributes and their semantics.

    Args:
        size: number of items.
        seed: dataset seed; (seed, split, index) determines an item.
        split: "train", "val" or "test" (independent streams).
        img_size: side of the square image in pixels (geometry scales with it).
        target: attribute whose value index is the class label.
        second_object: add a smaller second object in front of the main one.
        attributes: optional restriction of the vocabulary, ``{attribute: [values...]}`` (each value must
            be one of the built-in ones; a single value fixes the attribute).
    Item: ``(image float32 [3, H, W] in [0, 1], label int)``.
    """

    def __init__(self, size: int = 10000, seed: int = 0, split: str = "train", img_size: int = 32,
                 target: str = "shape", second_object: bool = False,
                 attributes: dict[str, list[str]] | None = None):
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r} for the synthetic dataset; use one of {list(SPLITS)}")
        if int(size) < 1:
            raise UserError(f"synthetic dataset size must be >= 1, got {size}")
        if int(img_size) < 16:
            raise UserError(f"synthetic img_size must be >= 16 pixels, got {img_size}")
        groups = {k: list(v) for k, v in ATTRIBUTES.items()}
        for key, values in dict(attributes or {}).items():
            if key not in groups:
                raise UserError(f"unknown synthetic attribute {key!r}; known: {list(ATTRIBUTES)}")
            values = [values] if isinstance(values, str) else list(values)
            bad = [v for v in values if v not in ATTRIBUTES[key]]
            if not values or bad or len(set(values)) != len(values):
                raise UserError(f"synthetic attribute {key!r} needs distinct values from "
                                f"{ATTRIBUTES[key]}, got {values}")
            groups[key] = values
        if target not in groups:
            raise UserError(f"unknown synthetic target {target!r}; use one of {list(ATTRIBUTES)}")
        self.size = int(size)
        self.seed = int(seed)
        self.split = split
        self.img_size = int(img_size)
        self.target = target
        self.second_object = bool(second_object)
        self.concept_groups: dict[str, list[str]] = groups
        self.concept_names: list[str] = [v for vals in groups.values() for v in vals]
        self.class_names: list[str] = list(groups[target])
        self._concept_index = {name: k for k, name in enumerate(self.concept_names)}
        s = self.img_size
        yy, xx = np.mgrid[0:s, 0:s]
        self._yi, self._xi = yy, xx  # integer pixel indices (pattern phase)
        self._yc = (yy + 0.5).astype(np.float32)  # pixel centres
        self._xc = (xx + 0.5).astype(np.float32)
        self._period = max(2, round(4 * s / 32))

    # ------------------------------------------------------------------ sampling
    def __len__(self) -> int:
        return self.size

    def _rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for ConceptShapes of size {self.size}")
        return np.random.Generator(np.random.PCG64(
            np.random.SeedSequence([self.seed, SPLITS[self.split], int(index)])))

    def _draw_attributes(self, rng: np.random.Generator) -> dict[str, str]:
        g = self.concept_groups
        # One uniform vector for all attributes (cheaper than one integers() call each).
        u = rng.random(len(g))
        attrs = {key: vals[int(ui * len(vals))] for ui, (key, vals) in zip(u, g.items(), strict=True)}
        if self.second_object:
            for key in ("shape", "colour", "pattern"):
                attrs["second_" + key] = g[key][int(rng.integers(len(g[key])))]
            attrs["second_size"] = "small"
            # Another grid point; the full grid when the vocabulary is restricted to one position.
            grid = g["position"] if len(g["position"]) > 1 else ATTRIBUTES["position"]
            others = [p for p in grid if p != attrs["position"]]
            attrs["second_position"] = others[int(rng.integers(len(others)))]
        return attrs

    def attributes(self, index: int) -> dict[str, str]:
        """Attribute values of item ``index`` (no drawing)."""
        return self._draw_attributes(self._rng(index))

    def label_of(self, attrs: dict[str, str]) -> int:
        return self.class_names.index(attrs[self.target])

    def _object(self, rng: np.random.Generator, shape: str, position: str, radius_range: tuple[float, float]
                ) -> np.ndarray:
        s = self.img_size
        r = rng.uniform(*radius_range) * s
        p = ATTRIBUTES["position"].index(position)
        cy = (GRID[p // 3] + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER)) * s
        cx = (GRID[p % 3] + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER)) * s
        return _shape_mask(shape, (self._xc - cx) / r, (self._yc - cy) / r)

    def _pattern_on(self, rng: np.random.Generator, pattern: str) -> np.ndarray | None:
        """Pixels where the pattern shows the full colour (None: everywhere)."""
        if pattern == "plain":
            return None
        p = self._period
        half = max(1, p // 2)
        oy, ox = (int(v) for v in rng.integers(p, size=2))
        y, x = self._yi + oy, self._xi + ox
        if pattern == "striped":
            return (y // half) % 2 == 0
        if pattern == "checkered":
            return ((y // half) + (x // half)) % 2 == 0
        if pattern == "dotted":
            return ~((y % p < half) & (x % p < half))
        raise ValueError(pattern)

    def _paint(self, img: np.ndarray, rng: np.random.Generator, mask: np.ndarray, colour: str,
               pattern: str) -> None:
        c = np.clip(np.asarray(PALETTE[colour], np.float32) + rng.uniform(-0.05, 0.05, 3), 0.0, 1.0)
        on = self._pattern_on(rng, pattern)
        img[:, mask] = c.astype(np.float32)[:, None]
        if on is not None:
            off = mask & ~on
            img[:, off] = (OFF_SHADE * c).astype(np.float32)[:, None]

    def _render(self, index: int) -> tuple[np.ndarray, dict[str, str], list[tuple[np.ndarray, list[str]]]]:
        """Draw item ``index``: image [3,H,W] float32, attributes, [(visible mask, concepts of object)]."""
        rng = self._rng(index)
        attrs = self._draw_attributes(rng)
        s = self.img_size
        bg = np.asarray(BACKGROUNDS[attrs["background"]], np.float32)
        bg = np.clip(bg + rng.uniform(-0.04, 0.04) + rng.uniform(-0.015, 0.015, 3), 0.0, 1.0)
        img = np.empty((3, s, s), np.float32)
        img[:] = bg.astype(np.float32)[:, None, None]
        main = self._object(rng, attrs["shape"], attrs["position"], RADIUS[attrs["size"]])
        self._paint(img, rng, main, attrs["colour"], attrs["pattern"])
        keys = ("shape", "colour", "pattern", "size", "position")
        objects = [(main, [attrs[k] for k in keys])]
        if self.second_object:
            # In front of the main object: it sits on another grid point and is smaller, so it can hide
            # only part of the main object and is itself always fully visible.
            lo, hi = RADIUS["small"]
            second = self._object(rng, attrs["second_shape"], attrs["second_position"],
                                  (lo * SECOND_SCALE, hi * SECOND_SCALE))
            self._paint(img, rng, second, attrs["second_colour"], attrs["second_pattern"])
            objects = [(main & ~second, objects[0][1]), (second, [attrs["second_" + k] for k in keys])]
        # Zero-mean uniform pixel noise with standard deviation NOISE_STD (uniform: 4x cheaper than normal).
        noise = rng.random((3, s, s), dtype=np.float32)
        noise -= 0.5
        noise *= NOISE_STD * np.sqrt(12.0)
        img += noise
        np.maximum(img, 0.0, out=img)
        np.minimum(img, 1.0, out=img)
        return img, attrs, objects

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, attrs, _ = self._render(int(index))
        return torch.from_numpy(img), self.label_of(attrs)

    # ------------------------------------------------------------------ concepts
    def concept_vector(self, index: int) -> np.ndarray:
        """Multi-hot bool [K] of the concepts present in item ``index`` (no drawing)."""
        attrs = self.attributes(index)
        v = np.zeros(len(self.concept_names), bool)
        for value in attrs.values():
            if value in self._concept_index:  # a second object's value may lie outside a restricted vocab
                v[self._concept_index[value]] = True
        return v

    @cached_property
    def _concept_matrix(self) -> np.ndarray:
        return np.stack([self.concept_vector(i) for i in range(self.size)])

    def concept_matrix(self) -> np.ndarray:
        """Multi-hot bool [N, K] (cached; computed from attributes without drawing images)."""
        return self._concept_matrix

    def concept_masks(self, index: int) -> np.ndarray:
        """Per-pixel bool masks [K, H, W] of item ``index``.

        Object concepts cover the visible pixels of the objects that have them; background concepts
        cover every non-object pixel (Network Dissection's segmentation convention, Bau et al. 2017).
        """
        _, attrs, objects = self._render(int(index))
        s = self.img_size
        masks = np.zeros((len(self.concept_names), s, s), bool)
        anything = np.zeros((s, s), bool)
        for mask, concepts in objects:
            anything |= mask
            for c in concepts:
                if c in self._concept_index:
                    masks[self._concept_index[c]] |= mask
        masks[self._concept_index[attrs["background"]]] = ~anything
        return masks

    def channel_stats(self, n: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std over the first ``n`` items (used to fix ``MEAN``/``STD``)."""
        x = np.stack([self._render(i)[0] for i in range(min(n, self.size))])
        return tuple(float(v) for v in x.mean((0, 2, 3))), tuple(float(v) for v in x.std((0, 2, 3)))

    def __repr__(self) -> str:
        return (f"ConceptShapes(size={self.size}, seed={self.seed}, split={self.split!r}, "
                f"img_size={self.img_size}, target={self.target!r}, second_object={self.second_object})")


@register_dataset
class Synthetic(DatasetSource):
    """:class:`ConceptShapes`, the embedded default. Never augmented: crops move objects across the position grid
    and flips swap left and right, so the position concepts (and the label under ``target="position"``) would
    become wrong."""

    name = "synthetic"
    img_size = 32
    options = frozenset({"target", "second_object", "attributes"})
    config_keys = ("target", "second_object")
    sizes = {"train": 10000, "val": 2000, "test": 2000}  # a split's size when none is asked for (analyze --probe)

    def build(self, request: DataRequest) -> Dataset:
        size = self.sizes[request.split] if request.size is None else request.size
        return ConceptShapes(size=int(size), seed=request.seed, split=request.split, img_size=request.img_size,
                             **request.options)

    def info(self, request: DataRequest) -> DatasetInfo:
        ds = ConceptShapes(size=1, img_size=request.img_size, **request.options)
        return DatasetInfo(len(ds.class_names), list(ds.class_names), 3, MEAN, STD, request.img_size, self.name)

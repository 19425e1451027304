"""PCA directions of a layer and completeness curves (principal components vs neurons).

Dey et al., "Neuron explanations sacrifice completeness" (2020): explanations of individual neurons cover
less of a layer's representation than the same number of principal directions. Two measures:

* Completeness 1 (:func:`variance_curves`): cumulative fraction of the total variance captured by the
  top-k principal components, ``sum_{i<=k} lambda_i / sum_i lambda_i`` (eigenvalues of the activation
  covariance), vs by the k neurons of largest variance, ``sum_{top-k neurons} var_j / sum_j var_j``
  (projecting onto the span of k neuron axes keeps exactly their variances).
* Completeness 2 (:func:`ablation_curve`): the model's accuracy when the top-k directions of a basis are
  projected out of the layer's output in the forward pass (conv layers: per spatial position, over
  channels), centred on the mean: ``y' = y - V_k^T V_k (y - mu)``.

:func:`fit_pca` returns a :class:`PCA` whose :meth:`PCA.project` turns activations ``[N, C]`` into
component scores ``[N, k]`` so that every labeler can label principal directions as if they were units
(rows with ``layer = "<layer>#pca"``, ``unit`` = component index).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..recording import analysis_mode, make_loader, record_activations, resolve_module, split_batch
from .run_options import RunOptions


@dataclass
class PCA:
    """``mean [C]``, ``components [k, C]`` (orthonormal rows, by decreasing variance; sign fixed so that
    each component's largest-magnitude loading is positive), ``explained_variance [k]`` (unbiased, i.e.
    eigenvalues of the sample covariance) and ``total_variance`` (sum of all per-unit variances)."""

    mean: torch.Tensor
    components: torch.Tensor
    explained_variance: torch.Tensor
    total_variance: float

    @property
    def explained_variance_ratio(self) -> torch.Tensor:
        return self.explained_variance / self.total_variance

    def project(self, acts) -> torch.Tensor:
        """Component scores ``(acts - mean) @ components^T``: ``[N, k]`` float32."""
        return project(self, acts)


def _as_acts(acts) -> torch.Tensor:
    acts = torch.as_tensor(acts)
    if acts.dim() != 2 or acts.shape[0] < 2:
        raise UserError(f"PCA needs activations [N >= 2, C], got shape {tuple(acts.shape)}")
    if not torch.isfinite(acts).all():
        raise UserError("activations contain NaN or inf")
    return acts.to(torch.float64)


def fit_pca(acts, k: int | None = None) -> PCA:
    """Principal components of ``acts [N, C]`` by SVD of the centred matrix (``torch.linalg.svd``,
    float64); keeps the top ``k`` (default all ``min(N, C)``)."""
    x = _as_acts(acts)
    N, C = x.shape
    mean = x.mean(0)
    _, S, Vh = torch.linalg.svd(x - mean, full_matrices=False)
    r = min(N, C) if k is None else max(1, min(int(k), N, C))
    comps = Vh[:r]
    # Deterministic signs: largest |loading| positive.
    idx = comps.abs().argmax(1)
    signs = torch.sign(comps.gather(1, idx[:, None])).squeeze(1)
    signs[signs == 0] = 1
    comps = comps * signs[:, None]
    var = S[:r] ** 2 / (N - 1)
    total = float(x.var(0, unbiased=True).sum())
    return PCA(mean.float(), comps.float(), var, total)


def project(pca: PCA, acts) -> torch.Tensor:
    """Scores of ``acts [N, C]`` on the components of ``pca``: ``[N, k]``."""
    x = torch.as_tensor(acts).float()
    if x.dim() != 2 or x.shape[1] != pca.components.shape[1]:
        raise UserError(f"activations [N, {pca.components.shape[1]}] expected, got {tuple(x.shape)}")
    return (x - pca.mean.to(x.device)) @ pca.components.to(x.device).t()


def variance_curves(acts) -> dict[str, torch.Tensor]:
    """Completeness 1 (Dey et al. 2020): ``k [C]`` (1..C), ``pca [C]`` cumulative explained-variance
    fraction of the top-k principal components (1.0 beyond the rank), ``neurons [C]`` of the top-k
    neurons ranked by their own variance, and ``neuron_order [C]``."""
    x = _as_acts(acts)
    N, C = x.shape
    var = x.var(0, unbiased=True)
    total = var.sum()
    if total <= 0:
        raise UserError("activations are constant: no variance to explain")
    pca = fit_pca(x)
    pcs = torch.ones(C, dtype=torch.float64)
    cum = torch.cumsum(pca.explained_variance, 0) / total
    pcs[: cum.numel()] = cum
    order = torch.argsort(var, descending=True)
    neurons = torch.cumsum(var[order], 0) / total
    return {"k": torch.arange(1, C + 1), "pca": pcs.clamp_max(1.0), "neurons": neurons.clamp_max(1.0),
            "neuron_order": order}


def pca_basis(acts) -> tuple[torch.Tensor, torch.Tensor]:
    """``(directions [r, C], mean [C])``: principal components by decreasing variance."""
    pca = fit_pca(acts)
    return pca.components, pca.mean


def neuron_basis(acts) -> tuple[torch.Tensor, torch.Tensor]:
    """``(directions [C, C], mean [C])``: neuron axes (rows of the identity) by decreasing variance."""
    x = _as_acts(acts)
    order = torch.argsort(x.var(0, unbiased=True), descending=True)
    return torch.eye(x.shape[1])[order], x.mean(0).float()


class _ProjectOut:
    """Forward hook replacing a layer's output by ``y - V^T V (y - mu)`` over the channel dimension."""

    def __init__(self, directions: torch.Tensor, mean: torch.Tensor):
        self.V, self.mu = directions, mean

    def __call__(self, module, inputs, output):
        y = output
        if y.dim() == 4:  # [B, C, H, W]: project over channels at every position
            y = y.movedim(1, -1)
        V, mu = self.V.to(y.device, y.dtype), self.mu.to(y.device, y.dtype)
        out = y - ((y - mu) @ V.t()) @ V
        return out.movedim(-1, 1) if output.dim() == 4 else out


_ABLATION_RUN = RunOptions(batch_size=256)


def _ablation_basis(model: torch.nn.Module, layer: str, dataset, basis, acts, mean,
                    run: RunOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """``(directions [m, C], centre [C])`` of :func:`ablation_curve`'s ``basis`` (fitted on ``acts``, recorded
    from ``dataset`` when needed and not given)."""
    if isinstance(basis, str):
        if basis not in ("pca", "neurons"):
            raise UserError(f"basis must be 'pca', 'neurons' or a [m, C] tensor, got {basis!r}")
        if acts is None:
            acts = record_activations(model, dataset, [layer], batch_size=run.batch_size, device=run.device,
                                      progress=False).acts[layer]
        directions, centre = (pca_basis if basis == "pca" else neuron_basis)(acts)
        if mean is not None:
            centre = torch.as_tensor(mean).float()
        return directions, centre
    directions = torch.as_tensor(basis).float()
    if directions.dim() != 2:
        raise UserError(f"basis tensor must be [m, C], got shape {tuple(directions.shape)}")
    if mean is not None:
        centre = torch.as_tensor(mean).float()
    elif acts is not None:
        centre = torch.as_tensor(acts).float().mean(0)
    else:
        centre = torch.zeros(directions.shape[1])
    return directions, centre


def _accuracy(model: torch.nn.Module, loader, device: torch.device) -> float:
    """Top-1 accuracy of ``model`` over ``loader``'s ``(image, label)`` batches."""
    correct = total = 0
    for batch in loader:
        images, labels = split_batch(batch)
        if labels is None:
            raise UserError("ablation accuracy needs a dataset of (image, label) items")
        pred = model(images.to(device)).argmax(1).cpu()
        correct += int((pred == labels.reshape(-1)).sum())
        total += labels.numel()
    return correct / max(total, 1)


def ablation_curve(model: torch.nn.Module, layer: str, dataset, basis="pca", ks: Sequence[int] | None = None,
                   *, acts=None, mean=None, run: RunOptions | None = None) -> list[float]:
    """Completeness 2 (Dey et al. 2020): top-1 accuracy of ``model`` on ``dataset`` when the top-k
    directions of ``basis`` are projected out of ``layer``'s output, for each k in ``ks``.

    ``basis``: ``"pca"`` or ``"neurons"`` (fitted on ``acts [N, C]``, the layer's recorded activations;
    recorded from ``dataset`` when not given), or a tensor ``[m, C]`` of orthonormal directions ordered
    by importance (then ``mean`` [C] is the centre; default the mean of ``acts`` or zero). k = 0 is the
    unablated model; k = C with a complete basis replaces the output by the mean (chance-level accuracy).
    ``run``: batch size, device, seed and progress bar (default ``RunOptions(batch_size=256)``); stochastic
    models run with the same seed for every k.
    """
    from tqdm.auto import tqdm

    run = run if run is not None else _ABLATION_RUN
    resolve_module(model, layer)
    directions, centre = _ablation_basis(model, layer, dataset, basis, acts, mean, run)
    ks = list(range(directions.shape[0] + 1)) if ks is None else [int(k) for k in ks]
    if any(k < 0 or k > directions.shape[0] for k in ks):
        raise UserError(f"ks must lie in [0, {directions.shape[0]}] (the basis size), got {ks}")
    module = model.get_submodule(layer)
    loader = make_loader(dataset, run.batch_size)
    device = torch.device(run.device)
    accuracies = []
    with analysis_mode(model):
        for k in tqdm(ks, desc="ablation", disable=not run.progress, leave=False):
            torch.manual_seed(run.seed)
            handle = module.register_forward_hook(_ProjectOut(directions[:k], centre)) if k else None
            try:
                accuracies.append(_accuracy(model, loader, device))
            finally:
                if handle is not None:
                    handle.remove()
    return accuracies

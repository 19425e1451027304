"""PCA directions of a layer and completeness curves (principal components vs neurons).

Dey et al., "Neuron explanations sacrifice completeness" (2020): explanations of individual neurons cover
less of a layer's representation than the same number of principal directions. A conv layer's representation
is its channel vector at every spatial position, so its directions are the eigenvectors of the covariance of
those vectors over every (image, position) pair (:class:`lwtakit.stats.Moments`, accumulated streaming by
``record_activations(..., moments=True)``); other layers: over images. Every function here takes a layer's
``data`` as such :class:`~lwtakit.stats.Moments` or as activations ``[N, C]`` (rows = observations). Two measures:

* Completeness 1 (:func:`variance_curves`): cumulative fraction of the total variance captured by the
  top-k principal components, ``sum_{i<=k} lambda_i / sum_i lambda_i`` (eigenvalues of the covariance),
  vs by the k neurons of largest variance, ``sum_{top-k neurons} var_j / sum_j var_j`` (projecting onto the
  span of k neuron axes keeps exactly their variances).
* Completeness 2 (:func:`ablation_curve`): the model's accuracy when the top-k directions of a basis are
  projected out of the layer's output in the forward pass (conv layers: per spatial position, over
  channels, the same vectors the basis was fitted on), centred on the mean: ``y' = y - V_k^T V_k (y - mu)``.

:func:`fit_pca` returns a :class:`PCA` whose :meth:`PCA.project` turns activations ``[N, C]`` into
component scores ``[N, k]`` so that every labeler can label principal directions as if they were units. A conv
image's score is the projection of its spatial-mean channel vector, which is the spatial mean of its per-position
scores (the projection is linear).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..recording import RecordOptions, analysis_mode, make_loader, record_activations, resolve_module, split_batch
from ..stats import Moments
from .run_options import RunOptions


@dataclass
class PCA:
    """``mean [C]``, ``components [k, C]`` (orthonormal rows, by decreasing variance; sign fixed so that
    each component's largest-magnitude loading is positive), ``explained_variance [k]`` (eigenvalues of the
    unbiased sample covariance) and ``total_variance`` (its trace: the sum of all per-unit variances)."""

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


def _moments(data) -> Moments:
    """``data`` as :class:`Moments`: as given, or those of activations ``[N, C]``."""
    if not isinstance(data, Moments):
        return Moments.of(_as_acts(data))
    if data.count < 2:
        raise UserError(f"PCA needs at least 2 observations, the moments hold {data.count}")
    if not torch.isfinite(data.m2).all():
        raise UserError("activations contain NaN or inf")
    return data


def fit_pca(data, k: int | None = None) -> PCA:
    """Principal components of ``data`` (activations ``[N, C]`` or their :class:`Moments`): the eigenvectors of
    the covariance (``torch.linalg.eigh``, float64) by decreasing eigenvalue; keeps the top ``k`` (default all
    ``C``; directions beyond the rank have eigenvalue 0)."""
    m = _moments(data)
    cov = m.covariance()
    evals, evecs = torch.linalg.eigh(cov)
    C = cov.shape[0]
    r = C if k is None else max(1, min(int(k), C))
    comps = evecs.flip(1).t()[:r]
    # Deterministic signs: largest |loading| positive.
    idx = comps.abs().argmax(1)
    signs = torch.sign(comps.gather(1, idx[:, None])).squeeze(1)
    signs[signs == 0] = 1
    comps = comps * signs[:, None]
    var = evals.flip(0)[:r].clamp_min(0)
    return PCA(m.mean.float(), comps.float(), var, float(cov.diagonal().sum()))


def project(pca: PCA, acts) -> torch.Tensor:
    """Scores of ``acts [N, C]`` on the components of ``pca``: ``[N, k]``."""
    x = torch.as_tensor(acts).float()
    if x.dim() != 2 or x.shape[1] != pca.components.shape[1]:
        raise UserError(f"activations [N, {pca.components.shape[1]}] expected, got {tuple(x.shape)}")
    return (x - pca.mean.to(x.device)) @ pca.components.to(x.device).t()


def captured_variance(data, directions) -> float:
    """Share of the total variance of ``data`` in the span of the orthonormal ``directions [k, C]``:
    ``trace(V S V^T) / trace(S)`` with ``S`` the covariance of ``data`` (e.g. a basis fitted on spatial means,
    measured on the per-position covariance)."""
    cov = _moments(data).covariance()
    V = torch.as_tensor(directions).to(torch.float64)
    if V.dim() != 2 or V.shape[1] != cov.shape[0]:
        raise UserError(f"directions [k, {cov.shape[0]}] expected, got shape {tuple(V.shape)}")
    return float(torch.einsum("kc,cd,kd->", V, cov, V) / cov.diagonal().sum())


def variance_curves(data) -> dict[str, torch.Tensor]:
    """Completeness 1 (Dey et al. 2020) of ``data`` (activations ``[N, C]`` or their :class:`Moments`):
    ``k [C]`` (1..C), ``pca [C]`` cumulative explained-variance fraction of the top-k principal components,
    ``neurons [C]`` of the top-k neurons ranked by their own variance, and ``neuron_order [C]``."""
    m = _moments(data)
    var = m.covariance().diagonal()
    total = var.sum()
    if total <= 0:
        raise UserError("activations are constant: no variance to explain")
    pcs = torch.cumsum(fit_pca(m).explained_variance, 0) / total
    order = torch.argsort(var, descending=True)
    neurons = torch.cumsum(var[order], 0) / total
    C = var.numel()
    return {"k": torch.arange(1, C + 1), "pca": pcs.clamp_max(1.0), "neurons": neurons.clamp_max(1.0),
            "neuron_order": order}


def pca_basis(data) -> tuple[torch.Tensor, torch.Tensor]:
    """``(directions [C, C], mean [C])``: principal components by decreasing variance."""
    pca = fit_pca(data)
    return pca.components, pca.mean


def neuron_basis(data) -> tuple[torch.Tensor, torch.Tensor]:
    """``(directions [C, C], mean [C])``: neuron axes (rows of the identity) by decreasing variance."""
    m = _moments(data)
    order = torch.argsort(m.covariance().diagonal(), descending=True)
    return torch.eye(m.num_units)[order], m.mean.float()


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


def _ablation_basis(model: torch.nn.Module, layer: str, dataset, basis, data, run: RunOptions) -> tuple[
        torch.Tensor, torch.Tensor]:
    """``(directions [m, C], centre [C])`` of :func:`ablation_curve`'s ``basis`` (fitted on ``data``; without it, on
    the per-position moments of ``layer`` recorded from ``dataset``)."""
    if isinstance(basis, str):
        if basis not in ("pca", "neurons"):
            raise UserError(f"basis must be 'pca', 'neurons' or a [m, C] tensor, got {basis!r}")
        if data is None:
            options = RecordOptions(batch_size=run.batch_size, device=run.device, progress=False, moments=True,
                                    seed=run.seed)
            data = record_activations(model, dataset, [layer], options).moments[layer]
        return (pca_basis if basis == "pca" else neuron_basis)(data)
    directions = torch.as_tensor(basis).float()
    if directions.dim() != 2:
        raise UserError(f"basis tensor must be [m, C], got shape {tuple(directions.shape)}")
    centre = torch.zeros(directions.shape[1]) if data is None else _moments(data).mean.float()
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

    ``basis``: ``"pca"`` or ``"neurons"`` (fitted on ``acts``, the layer's activations ``[N, C]`` or their
    :class:`Moments`, e.g. a recording's per-position moments of a conv layer; when not given, the per-position
    moments recorded from ``dataset``), or a tensor ``[m, C]`` of orthonormal directions ordered by importance.
    ``mean`` [C] overrides the centre (default the mean of ``acts``, zero for a tensor basis without ``acts``).
    k = 0 is the unablated model; k = C with a complete basis replaces the output by the mean (chance-level
    accuracy). ``run``: batch size, device, seed and progress bar over the k values (default
    ``RunOptions(batch_size=256)``); stochastic models run with the same seed for every k.
    """
    from tqdm.auto import tqdm

    run = run if run is not None else _ABLATION_RUN
    resolve_module(model, layer)
    directions, centre = _ablation_basis(model, layer, dataset, basis, acts, run)
    if mean is not None:
        centre = torch.as_tensor(mean).float()
    ks = list(range(directions.shape[0] + 1)) if ks is None else [int(k) for k in ks]
    if any(k < 0 or k > directions.shape[0] for k in ks):
        raise UserError(f"ks must lie in [0, {directions.shape[0]}] (the basis size), got {ks}")
    module = model.get_submodule(layer)
    loader = make_loader(dataset, run.batch_size)
    device = torch.device(run.device)
    accuracies = []
    with analysis_mode(model):
        desc = f"ablation ({basis if isinstance(basis, str) else 'basis'} of {layer})"
        for k in tqdm(ks, desc=desc, disable=not run.progress, leave=False):
            torch.manual_seed(run.seed)
            handle = module.register_forward_hook(_ProjectOut(directions[:k], centre)) if k else None
            try:
                accuracies.append(_accuracy(model, loader, device))
            finally:
                if handle is not None:
                    handle.remove()
    return accuracies

"""Symmetry metrics of trained students (paper appendix A.1), batched over a leading model axis.

A hidden neuron j of layer l is the vector v_j = [incoming weights (and bias), outgoing weights].
- dead: ||v_j|| < max(dead_threshold, dead_relative * max_j ||v_j||)  (the fully symmetric state)
- Delta: sort neurons by norm; Delta_j = ||v_(j+1) - v_(j)|| between norm-neighbours (width - 1 pairs).
  For odd activations (v and -v compute the same function) Delta_j = min(||v_(j+1) - v_(j)||,
  ||v_(j+1) + v_(j)||) unless sign_identify is off; the norm sort puts +-copies side by side, since
  they have one norm. delta_relative divides Delta_j by the larger of the pair's two norms.
  A pair is symmetric when both neurons are dead, or both are live and Delta_j < delta_threshold; a
  dead and a live neuron are a broken pair. n_dos = #{symmetric pairs}, n_dosb = width - n_dos.
  With delta_relative and delta_threshold <= distinct_threshold, a symmetric pair of live neurons
  is always one group, so n_dos and n_distinct never disagree.
- groups: live neurons i, j are linked when ||v_i - v_j|| <= distinct_threshold * max(||v_i||, ||v_j||)
  (or ||v_i + v_j||, for odd activations, where v and -v compute the same function); groups are the
  connected components of that graph (single linkage: a chain is one group, whatever the neuron
  order); n_distinct = number of groups, the m of the bound m <= C gamma^(-beta)
- symmetry_class: the partition type, e.g. "3x1,1x2|d2" = one group of 3, two singletons, 2 dead
- weight_rank: numerical rank of W_1 W_2 ... W_D, and weight_svals its singular values (descending:
  the continuous order parameter of a rank transition, since the k-th goes to 0 where rank k
  is lost); rep_rank: rank of the last hidden representation
  on the test inputs (divided by sqrt(n_test)). A singular value counts when it exceeds
  max(rank_tol * largest, rank_atol).
"""

from __future__ import annotations

from collections import Counter

import torch

from phasemap import kernels
from phasemap.activations import ODD

Tensor = torch.Tensor


def neuron_vectors(weights: list[Tensor], biases: list[Tensor], layer: int) -> Tensor:
    """(M, width, fan_in [+1] + fan_out): each hidden neuron of `layer` as one vector."""
    parts = [weights[layer].transpose(1, 2)]
    if biases:
        parts.append(biases[layer].transpose(1, 2))
    parts.append(weights[layer + 1])
    return torch.cat(parts, dim=2)


def dead_mask(norms: Tensor, dead_threshold: Tensor, dead_relative: Tensor) -> Tensor:
    """(M, h) True where a neuron's norm is below the dead threshold."""
    cut = torch.maximum(dead_threshold, dead_relative * norms.max(dim=1).values)
    return norms < cut[:, None]


def neighbour_deltas(vectors: Tensor, sign_identify: Tensor, relative: Tensor) -> tuple[Tensor, Tensor]:
    """(M, h - 1) distances between norm-sorted neighbouring neurons, and the (M, h) sort order.

    sign_identify (M,) bool: take the nearer of v and -v; relative (M,) bool: divide by the larger norm.
    """
    norms = vectors.norm(dim=2)
    order = norms.argsort(dim=1)
    ordered = torch.take_along_dim(vectors, order[..., None], dim=1)
    upper, lower = ordered[:, 1:], ordered[:, :-1]
    delta = (upper - lower).norm(dim=2)
    delta = torch.where(sign_identify[:, None], torch.minimum(delta, (upper + lower).norm(dim=2)), delta)
    sorted_norms = torch.take_along_dim(norms, order, dim=1)
    scale = torch.maximum(sorted_norms[:, 1:], sorted_norms[:, :-1])
    scaled = torch.where(scale > 0, delta / scale.clamp_min(torch.finfo(delta.dtype).tiny), 0.0)
    return torch.where(relative[:, None], scaled, delta), order


def symmetric_pairs(delta: Tensor, order: Tensor, dead: Tensor, threshold: Tensor) -> Tensor:
    """(M, h - 1) True where a norm-neighbour pair is symmetric: both dead, or both live and close."""
    dead = torch.take_along_dim(dead, order, dim=1)
    both_dead = dead[:, 1:] & dead[:, :-1]
    both_live = ~dead[:, 1:] & ~dead[:, :-1]
    return both_dead | (both_live & (delta < threshold[:, None]))


def group_labels(vectors: Tensor, dead: Tensor, threshold: Tensor, odd: bool) -> Tensor:
    """(M, h) group of each neuron: the smallest index in its group, -1 for dead neurons.

    Computed in float32 whatever the input's dtype: the link test compares squared distances with
    t^2 = 0.01 (the default) of a squared norm, five orders of magnitude above float32's rounding,
    so only pairs within ~1e-6 (relative) of the threshold could go either way; it is 2-3x faster
    than float64 and is the bulk of a training trace's cost.
    """
    vectors, threshold = vectors.float(), threshold.float()
    m, h, _ = vectors.shape
    sq = (vectors * vectors).sum(dim=2)                                       # squared norms (M, h)
    # Linked when ||v - w||^2 = |v|^2 + |w|^2 - 2 v.w <= t^2 max(|v|^2, |w|^2) (for odd activations
    # with |v.w|: the nearer of w and -w), i.e. -2 v.w <= t^2 max - |v|^2 - |w|^2, from one Gram
    # matrix and in-place steps (these (M, h, h) passes are most of the cost).
    gram = torch.bmm(vectors, vectors.transpose(1, 2))
    if odd:
        gram.abs_()
    bound = torch.maximum(sq[:, :, None], sq[:, None, :]).mul_((threshold * threshold)[:, None, None])
    bound.sub_(sq[:, :, None]).sub_(sq[:, None, :])
    live = ~dead
    link = gram.mul_(-2) <= bound
    link &= live[:, :, None] & live[:, None, :]
    link &= ~torch.eye(h, dtype=torch.bool, device=vectors.device)
    # Connected components by min-label propagation: each neuron takes the smallest label among
    # itself and its links, then its label's label (a shortcut along the chain), until nothing
    # changes; labels end as each component's smallest index. Only models with a link need it
    # (early in training, from a random init, most have none).
    labels = torch.arange(h, device=vectors.device, dtype=torch.int32).expand(m, h).clone()
    linked = link.flatten(1).any(dim=1).nonzero().flatten()
    if len(linked):
        sub, lab = link[linked], labels[linked]
        while True:
            new = torch.minimum(lab, torch.where(sub, lab[:, None, :], h).amin(dim=2))
            new = torch.minimum(new, torch.gather(new, 1, new.long()))
            if torch.equal(new, lab):
                break
            lab = new
        labels[linked] = lab
    return torch.where(live, labels.long(), -1)


def partition_string(labels: list[int]) -> str:
    """Canonical partition type of one layer: group sizes (descending, with multiplicity) and dead count."""
    dead = sum(1 for g in labels if g < 0)
    sizes = Counter(Counter(g for g in labels if g >= 0).values())
    parts = ",".join(f"{size}x{count}" for size, count in sorted(sizes.items(), reverse=True))
    return f"{parts}|d{dead}"


def canonical_groups(labels: list[int]) -> list[int]:
    """Relabel groups 0, 1, 2, ... in order of first appearance; dead stays -1."""
    names: dict[int, int] = {}
    return [-1 if g < 0 else names.setdefault(g, len(names)) for g in labels]


def numerical_rank(mats: Tensor, rank_tol: Tensor, rank_atol: Tensor) -> Tensor:
    """(M,) number of singular values above max(rank_tol * largest, rank_atol)."""
    s = torch.linalg.svdvals(mats.double())
    cut = torch.maximum(rank_tol.double() * s[:, 0], rank_atol.double())
    return (s > cut[:, None]).sum(dim=1)


def measure(weights: list[Tensor], biases: list[Tensor], x_test: Tensor, activation: str,
            th: dict[str, Tensor]) -> dict[str, list]:
    """All metrics for M trained models, as columns {name: list of M values}.

    th holds (M,) tensors delta_threshold, dead_threshold, dead_relative, distinct_threshold,
    rank_tol, rank_atol, and optionally sign_identify and delta_relative (read as booleans; absent:
    sign_identify on, delta_relative off). Scalar columns describe the first hidden layer; `layer_*` columns
    hold one entry per hidden layer.
    """
    weights = [w.double() for w in weights]
    biases = [b.double() for b in biases]
    n_models = weights[0].shape[0]
    th = _thresholds(th, n_models, weights[0].device)
    layers: dict[str, list[list]] = {k: [[] for _ in range(n_models)] for k in
                                     ("n_distinct", "n_dead", "n_dos", "n_dosb", "symmetry_class", "groups")}
    deltas: list[list[float]] = [[] for _ in range(n_models)]
    for layer in range(len(weights) - 1):
        dead, delta, n_dos, labels = _layer(weights, biases, layer, activation, th)
        labels = labels.tolist()
        width = dead.shape[1]
        n_dead = dead.sum(dim=1).tolist()
        for i in range(n_models):
            layers["n_distinct"][i].append(len({g for g in labels[i] if g >= 0}))
            layers["n_dead"][i].append(n_dead[i])
            layers["n_dos"][i].append(int(n_dos[i]))
            layers["n_dosb"][i].append(width - int(n_dos[i]))
            layers["symmetry_class"][i].append(partition_string(labels[i]))
            layers["groups"][i].append(canonical_groups(labels[i]))
        if layer == 0:
            deltas = delta.tolist()

    out: dict[str, list] = {
        "weight_rank": _product_rank(weights, th).tolist(),
        "weight_svals": torch.linalg.svdvals(_product(weights)).tolist(),
        "layer_weight_rank": torch.stack(
            [numerical_rank(w, th["rank_tol"], th["rank_atol"]) for w in weights], dim=1).tolist(),
    }
    if len(weights) > 1:
        _, _, hidden = kernels.forward(weights, biases, x_test.double(), activation, keep=True)
        h = hidden[-1] / x_test.shape[1] ** 0.5             # the last hidden layer, (M, N, width)
        out["rep_rank"] = numerical_rank(h, th["rank_tol"], th["rank_atol"]).tolist()
    else:
        out["rep_rank"] = [None] * n_models
    for key, per_model in layers.items():
        if key != "groups":
            out[key] = [vals[0] if vals else None for vals in per_model]
        out[f"layer_{key}"] = per_model
    out["deltas"] = deltas
    return out


def _thresholds(th: dict[str, Tensor], n_models: int, device) -> dict[str, Tensor]:
    """th in float64, with the flags sign_identify and delta_relative as booleans (absent: on, off)."""
    out = {k: v.double() for k, v in th.items() if k not in ("sign_identify", "delta_relative")}
    for key, default in (("sign_identify", True), ("delta_relative", False)):
        out[key] = th[key].bool() if key in th else torch.full((n_models,), default, device=device)
    return out


def _layer(weights: list[Tensor], biases: list[Tensor], layer: int, activation: str,
           th: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One hidden layer's dead mask (M, h), norm-neighbour deltas (M, h - 1), n_dos (M,) and group
    labels (M, h); th from _thresholds."""
    odd = activation in ODD
    vec = neuron_vectors(weights, biases, layer)
    dead = dead_mask(vec.norm(dim=2), th["dead_threshold"], th["dead_relative"])
    sign = th["sign_identify"] if odd else torch.zeros_like(th["sign_identify"])
    delta, order = neighbour_deltas(vec, sign, th["delta_relative"])
    n_dos = symmetric_pairs(delta, order, dead, th["delta_threshold"]).sum(dim=1)
    return dead, delta, n_dos, group_labels(vec, dead, th["distinct_threshold"], odd)


def trace(weights: list[Tensor], biases: list[Tensor], activation: str, th: dict[str, Tensor]) -> dict[str, list]:
    """The metrics a training trace records (columns.TRACE_METRICS), for M models: the first hidden
    layer's deltas, n_dos and n_distinct, and weight_rank; cheaper than `measure` (no partition,
    no representation). th as for `measure`."""
    weights = [w.double() for w in weights]
    biases = [b.double() for b in biases]
    n_models = weights[0].shape[0]
    if len(weights) < 2:
        none = [None] * n_models
        return {"deltas": none, "n_dos": none, "n_distinct": none, "layer_n_dos": none,
                "weight_rank": _product_rank(weights, th).tolist()}
    th = _thresholds(th, n_models, weights[0].device)
    dead, delta, n_dos, labels = _layer(weights, biases, 0, activation, th)
    distinct = torch.zeros(n_models, dead.shape[1] + 1, dtype=torch.bool, device=dead.device)
    distinct.scatter_(1, labels.clamp_min(-1) + 1, True)           # column 0 collects the dead (-1)
    return {"deltas": delta.tolist(), "n_dos": n_dos.tolist(), "n_distinct": distinct[:, 1:].sum(dim=1).tolist(),
            "layer_n_dos": [None] * n_models, "weight_rank": _product_rank(weights, th).tolist()}


def _product(weights: list[Tensor]) -> Tensor:
    """W_1 W_2 ... W_D, (M, d_in, d_out)."""
    product = weights[0]
    for w in weights[1:]:
        product = torch.bmm(product, w)
    return product


def _product_rank(weights: list[Tensor], th: dict[str, Tensor]) -> Tensor:
    """(M,) numerical rank of W_1 W_2 ... W_D."""
    return numerical_rank(_product(weights), th["rank_tol"], th["rank_atol"])

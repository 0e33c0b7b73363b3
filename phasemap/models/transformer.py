"""The paper's simple transformer (Fig. 10, second row): attention layers, then a linear readout.

The model has no embedding: it works on tokens of dimension D = input_dim + 1 (a token is an
input and its label; see tasks.icl_linear). Each of the `n_layers` layers is full (non-causal)
softmax self-attention over the n_ctx tokens, summed over `heads` heads,

    x <- x + sum_h softmax((x W_Q^h)(x W_K^h)^T / sqrt(d_k)) (x W_V^h)      (no `x +` without residual)

and the readout is out = x[:, :, -1, :] @ W_out: the prediction for the final token's hidden label.

Parameters, as one flat list with a leading model axis M (models never mix):
    for each layer l:  W_Q (M, heads, D, d_k), W_K (M, heads, D, d_k), W_V (M, heads, D, D)
    then               W_out (M, D, 1)
so layer l's weights are params[3 l : 3 l + 3] and W_out is params[-1].

Metric: the attention score depends on W_Q and W_K only through W_Q W_K^T, which the double
rotation W_Q -> W_Q A, W_K -> W_K A^{-T} leaves unchanged; its symmetric states are those where W_Q
and W_K lose the same directions. Per head (paper appendix A.1, eqs. 10-13): W_Q^T W_Q = U Λ_Q U^T,
Λ_K = U^T W_K^T W_K U, Δ_i = |(Λ_Q)_ii - (Λ_K)_ii| (d_k values); a layer's n_dos counts the Δ_i
below delta_threshold over all heads, n_dosb = heads * d_k - n_dos.

    params = [p[None] for p in init_params(cfg)]          # M = 1
    out = forward(params, x, **arch(cfg))                 # (1, B, 1)
"""

from __future__ import annotations

import torch

from phasemap import columns
from phasemap.rng import derive_seed
from phasemap.symmetry import numerical_rank

Tensor = torch.Tensor

# Eigenvalues of W_Q^T W_Q closer than this (relative to the largest) are one repeated eigenvalue:
# far above eigh's rounding (~1e-16 relative in float64), far below any Δ threshold in use.
TIE_TOL = 1e-8

def arch(cfg: dict) -> dict:
    """What forward and measure need beside the parameters (equal for a batch)."""
    return {"n_layers": cfg["n_layers"], "heads": cfg["heads"], "d_k": cfg["d_k"], "residual": cfg["residual"]}


def init_params(cfg: dict, dtype: torch.dtype = torch.float32) -> list[Tensor]:
    """One model's parameters (no M axis), in the module's order, each entry N(0, init_scale^2 / D).

    Drawn in float64 from the run's `seed` alone (purpose "student"), then cast to dtype.
    cfg keys: input_dim, n_layers, heads (default 1), d_k, init_scale, seed.
    """
    dim, heads, d_k = cfg["input_dim"] + 1, cfg.get("heads", 1), cfg["d_k"]
    gen = torch.Generator().manual_seed(derive_seed(cfg["seed"], "student"))
    shapes = [(heads, dim, d_k), (heads, dim, d_k), (heads, dim, dim)] * cfg["n_layers"] + [(dim, 1)]
    std = cfg["init_scale"] / dim**0.5
    return [(torch.randn(shape, generator=gen, dtype=torch.float64) * std).to(dtype) for shape in shapes]


def _attention(x: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor, d_k: int, last_only: bool = False) -> Tensor:
    """One layer's attention output, summed over heads: x (M, B, T, D) -> (M, B, T, D), or only the
    final token's (M, B, 1, D) with last_only (all a readout of the final token needs from the
    last layer).

    The projections of every head are one matmul per model ([W_Q | W_K | W_V] side by side), and
    the softmax is written out: on the CPU both are about 20% faster per step than three einsums
    and scaled_dot_product_attention, whose math path spends a tenth of the step checking masks.
    """
    n_models, batch, tokens, dim = x.shape
    heads = w_q.shape[1]
    weights = [w_k, w_v] if last_only else [w_q, w_k, w_v]
    stacked = torch.cat(weights, dim=-1).transpose(1, 2).reshape(n_models, dim, -1)     # (M, D, H * width)
    proj = torch.bmm(x.reshape(n_models, batch * tokens, dim), stacked).view(n_models, batch, tokens, heads, -1)
    if last_only:
        k, v = proj.split([d_k, dim], dim=-1)
        q = torch.einsum("mbd,mhdk->mbhk", x[:, :, -1], w_q).unsqueeze(2)              # (M, B, 1, H, d_k)
    else:
        q, k, v = proj.split([d_k, d_k, dim], dim=-1)                                  # (M, B, T, H, .)
    scores = torch.einsum("mbqhk,mbthk->mbhqt", q, k) * d_k**-0.5
    return torch.einsum("mbhqt,mbthe->mbqe", scores.softmax(dim=-1), v)


def final_token(params: list[Tensor], x: Tensor, n_layers: int, heads: int, d_k: int,
                residual: bool) -> Tensor:
    """The final token's representation before the readout: x (M, B, n_ctx, D) -> (M, B, D)."""
    assert len(params) == 3 * n_layers + 1 and params[0].shape[1] == heads and params[0].shape[-1] == d_k
    for layer in range(n_layers):
        last = layer == n_layers - 1
        mixed = _attention(x, *params[3 * layer: 3 * layer + 3], d_k, last_only=last)
        x = (x[:, :, -1:] if last else x) + mixed if residual else mixed
    return x[:, :, -1, :]


def forward(params: list[Tensor], x: Tensor, n_layers: int, heads: int, d_k: int, residual: bool) -> Tensor:
    """Predictions of M models at once: x (M, B, n_ctx, D) -> (M, B, 1); differentiable by autograd."""
    return torch.bmm(final_token(params, x, n_layers, heads, d_k, residual), params[-1])


def rotation_deltas(w_q: Tensor, w_k: Tensor) -> Tensor:
    """Δ_i = |(Λ_Q)_ii - (Λ_K)_ii| (eqs. 10-13) for query and key weights (..., D, d_k) -> (..., d_k).

    Ordered by ascending eigenvalue of W_Q^T W_Q. Compute in float64.
    """
    gram_q = w_q.transpose(-1, -2) @ w_q
    lam, u = torch.linalg.eigh(gram_q)                            # (..., d_k), (..., d_k, d_k)
    s = u.transpose(-1, -2) @ (w_k.transpose(-1, -2) @ w_k) @ u  # Λ_K before taking its diagonal
    # U is unique only up to a rotation inside each eigenspace of W_Q^T W_Q, and a repeated eigenvalue
    # is the common case here: W_Q = 0 (a collapsed layer), d_k > D, or any direction n that W_Q loses
    # (W_Q n = 0), which is what a symmetric state is. Inside such an eigenspace (Λ_Q)_ii is one value
    # λ for every basis, but the diagonal of S = U^T W_K^T W_K U is not: e.g. with two lost directions
    # of which W_K keeps one, the basis (n1, n2) gives Δ = (0, |W_K n2|^2) and the basis rotated by
    # 45 degrees gives Δ = (|W_K n2|^2 / 2) twice. We fix the basis inside each eigenspace to the one
    # that diagonalises S's block there, so the diagonal is the block's eigenvalues, which depend on no
    # basis; of all bases it resolves the most directions (a diagonal is majorised by the eigenvalues).
    # Where W_K also loses every direction that W_Q loses (W_Q = W_K = 0 included) the block is 0 and
    # any basis gives Δ = 0 there; with distinct eigenvalues the step changes nothing.
    new_value = lam.diff(dim=-1) > TIE_TOL * lam[..., -1:].clamp_min(0)
    cluster = torch.cat([torch.zeros_like(new_value[..., :1]), new_value], dim=-1).cumsum(dim=-1)
    block = torch.where(cluster[..., :, None] == cluster[..., None, :], s, 0.0)
    # Shift each eigenspace's block by a multiple of 3 ||block|| so that eigh cannot mix eigenspaces.
    gap = 3 * torch.linalg.matrix_norm(block)[..., None] + torch.finfo(s.dtype).tiny
    _, v = torch.linalg.eigh(block + torch.diag_embed(cluster.to(s.dtype) * gap))
    # v is block-diagonal: the new basis is U v, and diag(v^T M v)_i = sum_j v_ji (M v)_ji.
    diag_q = (v * (lam[..., :, None] * v)).sum(dim=-2)
    diag_k = (v * (s @ v)).sum(dim=-2)
    return (diag_q - diag_k).abs()


def measure(params: list[Tensor], x_test: Tensor, th: dict[str, Tensor], n_layers: int, heads: int,
            d_k: int, residual: bool) -> dict[str, list]:
    """Symmetry metrics of M trained transformers, as columns {name: list of M values}, in float64.

    x_test (M, Nt, n_ctx, D), or (Nt, n_ctx, D) shared by all models; th holds (M,) tensors
    delta_threshold, rank_tol, rank_atol (other keys are ignored). Columns: n_dos, n_dosb (first
    layer), layer_n_dos, layer_n_dosb, layer_qk_rank (rank of sum_h W_Q^h W_K^h^T, D x D), one
    entry per layer; weight_rank (rank of W_out, 0 or 1) and weight_svals (its singular value); rep_rank (rank of the final token's
    representation on x_test over sqrt(Nt)); deltas (layer 0, head 0); and the mlp-only columns
    as None. A singular value counts when it exceeds max(rank_tol * largest, rank_atol).
    """
    params = [p.double() for p in params]
    n_models = params[0].shape[0]
    tol, atol = th["rank_tol"].double(), th["rank_atol"].double()
    attention = trace(params, th, n_layers, heads, d_k, residual)
    dos = torch.tensor(attention["layer_n_dos"], dtype=torch.int64).reshape(n_models, n_layers)
    qk_rank = [numerical_rank((params[3 * layer] @ params[3 * layer + 1].transpose(-1, -2)).sum(dim=1), tol, atol)
               for layer in range(n_layers)]
    if x_test.dim() == 3:
        x_test = x_test.expand(n_models, *x_test.shape)
    rep = final_token(params, x_test.double(), n_layers, heads, d_k, residual) / x_test.shape[1] ** 0.5
    out: dict[str, list] = {
        "n_dos": attention["n_dos"],
        "n_dosb": (heads * d_k - dos[:, 0]).tolist(),
        "layer_n_dos": attention["layer_n_dos"],
        "layer_n_dosb": (heads * d_k - dos).tolist(),
        "layer_qk_rank": torch.stack(qk_rank, dim=1).tolist(),
        "weight_rank": attention["weight_rank"],
        "weight_svals": torch.linalg.svdvals(params[-1]).tolist(),
        "rep_rank": numerical_rank(rep, tol, atol).tolist(),
        "deltas": attention["deltas"],
    }
    return {key: out.get(key, [None] * n_models) for key in columns.METRICS}     # neuron columns: None


def trace(params: list[Tensor], th: dict[str, Tensor], n_layers: int, heads: int, d_k: int,
          residual: bool) -> dict[str, list]:
    """The trace metrics of M models (columns.TRACE_METRICS), for a record step: measure's
    attention columns without the representation's rank."""
    params = [p.double() for p in params]
    threshold = th["delta_threshold"].double()[:, None, None]
    n_dos = []
    for layer in range(n_layers):
        delta = rotation_deltas(params[3 * layer], params[3 * layer + 1])
        if layer == 0:
            deltas = delta[:, 0].tolist()
        n_dos.append((delta < threshold).sum(dim=(1, 2)))
    dos = torch.stack(n_dos, dim=1)
    return {"deltas": deltas, "n_dos": dos[:, 0].tolist(), "n_distinct": [None] * len(deltas),
            "layer_n_dos": dos.tolist(),
            "weight_rank": numerical_rank(params[-1], th["rank_tol"].double(), th["rank_atol"].double()).tolist()}

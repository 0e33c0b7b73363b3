"""The transformer family (forward, double-rotation metric) and the in-context linear regression task."""

import pytest
import torch

from phasemap import columns
from phasemap.models.transformer import final_token, forward, init_params, measure, rotation_deltas
from phasemap.tasks.icl_linear import make_data, predict_zero_loss

CFG = dict(input_dim=3, n_layers=2, heads=2, d_k=2, init_scale=1.0, seed=0)
TH = dict(delta_threshold=0.1, rank_tol=1e-6, rank_atol=1e-9)
TASK = dict(input_dim=3, n_ctx=6, n_train=40, n_test=30, input_scale=1.0, sigma=0.0, noise_on="labels",
            teacher_rank=None, data_seed=None, seed=0)


def batch(*seeds, dtype=torch.float64, **cfg):
    """The parameters of one model per seed, stacked on a leading model axis."""
    per_model = [init_params({**CFG, **cfg, "seed": s}, dtype) for s in seeds]
    return [torch.stack(ps) for ps in zip(*per_model)]


def run(params, x, residual=True, **cfg):
    c = {**CFG, **cfg}
    return forward(params, x, c["n_layers"], c["heads"], c["d_k"], residual)


def metrics(w_q, w_k, x=None, w_v=None, w_out=None, **overrides):
    """Measure one one-layer, one-head model with W_Q, W_K (D, d_k); returns model 0's columns."""
    dim, d_k = w_q.shape
    w_v = torch.randn(dim, dim, dtype=torch.float64) if w_v is None else w_v
    w_out = torch.randn(dim, 1, dtype=torch.float64) if w_out is None else w_out
    params = [w_q[None, None], w_k[None, None], w_v[None, None], w_out[None]]
    x = torch.randn(1, 20, 4, dim, dtype=torch.float64) if x is None else x
    th = {k: torch.tensor([v], dtype=torch.float64) for k, v in {**TH, **overrides}.items()}
    return {k: v[0] for k, v in measure(params, x, th, 1, 1, d_k, True).items()}


def random_orthogonal(n, seed):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


# ---- model ----

def test_init_params_shapes_order_and_seed():
    params = init_params({**CFG, "n_layers": 2, "heads": 3, "d_k": 5}, torch.float32)
    dim = CFG["input_dim"] + 1
    assert [tuple(p.shape) for p in params] == [(3, dim, 5), (3, dim, 5), (3, dim, dim)] * 2 + [(dim, 1)]
    assert all(p.dtype == torch.float32 for p in params)
    again = init_params({**CFG, "n_layers": 2, "heads": 3, "d_k": 5}, torch.float32)
    other = init_params({**CFG, "n_layers": 2, "heads": 3, "d_k": 5, "seed": 1}, torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(params, again))
    assert not torch.equal(params[0], other[0])


def test_init_scale_sets_the_std():
    params = init_params({**CFG, "input_dim": 99, "heads": 4, "d_k": 50, "init_scale": 0.3}, torch.float64)
    std = torch.cat([p.flatten() for p in params]).std().item()
    assert std == pytest.approx(0.3 / 100**0.5, rel=0.02)


def test_forward_shape_and_batched_models_never_mix():
    params = batch(0, 1, 2)
    x = torch.randn(3, 5, 4, CFG["input_dim"] + 1, dtype=torch.float64)
    out = run(params, x)
    assert out.shape == (3, 5, 1)
    for i in range(3):
        alone = run([p[i:i + 1] for p in params], x[i:i + 1])
        torch.testing.assert_close(out[i:i + 1], alone, rtol=1e-12, atol=1e-12)


def reference_forward(params, x, n_layers, heads, d_k, residual):
    """One model, one sequence at a time, head by head: x (B, n_ctx, D) -> (B, 1)."""
    outs = []
    for seq in x:
        for layer in range(n_layers):
            w_q, w_k, w_v = params[3 * layer: 3 * layer + 3]
            mixed = sum(torch.softmax((seq @ w_q[h]) @ (seq @ w_k[h]).T / d_k**0.5, dim=1) @ (seq @ w_v[h])
                        for h in range(heads))
            seq = seq + mixed if residual else mixed
        outs.append(seq[-1] @ params[-1])
    return torch.stack(outs)


def test_forward_matches_a_per_sequence_per_head_reference():
    params = batch(0, 1, n_layers=2, heads=2, d_k=3, init_scale=2.0)
    x = torch.randn(2, 4, 5, CFG["input_dim"] + 1, dtype=torch.float64)
    for residual in (True, False):
        out = run(params, x, residual, d_k=3)
        for i in range(2):
            expected = reference_forward([p[i] for p in params], x[i], 2, 2, 3, residual)
            torch.testing.assert_close(out[i], expected, rtol=1e-12, atol=1e-12)


def test_residual_changes_the_output():
    params = batch(0)
    x = torch.randn(1, 5, 4, CFG["input_dim"] + 1, dtype=torch.float64)
    assert not torch.allclose(run(params, x, residual=True), run(params, x, residual=False))


def test_zero_queries_and_keys_average_the_tokens_uniformly():
    dim = 3
    x = torch.tensor([[1.0, 2.0, 0.0], [3.0, -1.0, 4.0], [-2.0, 0.5, 1.0], [0.0, 1.5, -3.0]], dtype=torch.float64)
    w_v = torch.tensor([[1.0, 0.0, 2.0], [0.0, -1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    w_out = torch.tensor([[1.0], [2.0], [-1.0]], dtype=torch.float64)
    zero = torch.zeros(1, 1, dim, 2, dtype=torch.float64)
    params = [zero, zero, w_v[None, None], w_out[None]]
    mean = x.sum(dim=0) / 4                              # [0.5, 0.75, 0.5]
    attended = mean @ w_v                                # [1.0, -0.25, 1.5]
    expected_plain = (attended @ w_out).item()           # 1.0 - 0.5 - 1.5 = -1.0
    expected_residual = ((x[-1] + attended) @ w_out).item()
    assert expected_plain == pytest.approx(-1.0)
    kw = dict(n_layers=1, heads=1, d_k=2)
    assert run(params, x[None, None], residual=False, **kw).item() == pytest.approx(expected_plain, abs=1e-12)
    assert run(params, x[None, None], residual=True, **kw).item() == pytest.approx(expected_residual, abs=1e-12)


def test_forward_gradients_match_finite_differences():
    params = [p.requires_grad_() for p in batch(0, 1, n_layers=2, heads=2, d_k=2, input_dim=2)]
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    for residual in (True, False):
        assert torch.autograd.gradcheck(
            lambda x, *ps: forward(list(ps), x, 2, 2, 2, residual), (x, *params))


def test_autograd_of_the_summed_loss_gives_each_model_its_own_gradient():
    params = [p.requires_grad_() for p in batch(0, 1)]
    x = torch.randn(2, 5, 4, CFG["input_dim"] + 1, dtype=torch.float64)
    run(params, x).pow(2).sum().backward()
    alone = [p[1:].detach().clone().requires_grad_() for p in params]
    run(alone, x[1:]).pow(2).sum().backward()
    for p, q in zip(params, alone):
        torch.testing.assert_close(p.grad[1:], q.grad, rtol=1e-10, atol=1e-12)


# ---- metric ----

def test_collapsed_layer_is_fully_symmetric():
    m = metrics(torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64))
    assert (m["n_dos"], m["n_dosb"]) == (3, 0)
    assert m["deltas"] == [0.0, 0.0, 0.0]
    assert m["layer_qk_rank"] == [0]


def test_equal_queries_and_keys_are_symmetric():
    w = torch.randn(5, 3, dtype=torch.float64)
    m = metrics(w, w.clone())
    assert m["n_dos"] == 3
    assert max(m["deltas"]) < 1e-10


def test_equal_pair_rotated_is_symmetric():
    a, r = torch.randn(5, 3, dtype=torch.float64), random_orthogonal(3, 7)
    assert metrics(a @ r, a @ r)["n_dos"] == 3


def test_metric_is_invariant_under_a_common_rotation():
    w_q, w_k = torch.randn(5, 3, dtype=torch.float64), 2 * torch.randn(5, 3, dtype=torch.float64)
    r = random_orthogonal(3, 3)
    plain, rotated = metrics(w_q, w_k), metrics(w_q @ r, w_k @ r)
    torch.testing.assert_close(torch.tensor(rotated["deltas"]), torch.tensor(plain["deltas"]), rtol=1e-9, atol=1e-12)


def test_random_pair_of_different_norms_is_broken():
    g = torch.Generator().manual_seed(1)
    w_q = torch.randn(6, 3, generator=g, dtype=torch.float64)
    w_k = 3 * torch.randn(6, 3, generator=g, dtype=torch.float64)
    m = metrics(w_q, w_k, delta_threshold=1e-3)
    assert (m["n_dos"], m["n_dosb"]) == (0, 3)
    assert m["layer_qk_rank"] == [3]                   # a random full-rank pair, d_k <= D


def test_shared_null_space_is_counted_and_lowers_the_qk_rank():
    s, d_k = 2, 4
    w_q, w_k = torch.randn(6, d_k, dtype=torch.float64), 3 * torch.randn(6, d_k, dtype=torch.float64)
    w_q[:, :s] = 0
    w_k[:, :s] = 0
    r = random_orthogonal(d_k, 5)                      # hide the null space from the column basis
    m = metrics(w_q @ r, w_k @ r, delta_threshold=1e-3)
    assert sum(d < 1e-10 for d in m["deltas"]) >= s
    assert m["n_dos"] == s
    assert m["layer_qk_rank"] == [d_k - s]


def test_repeated_eigenvalue_takes_the_basis_that_diagonalises_the_keys():
    # W_Q loses two directions, W_K only one of them: one symmetric direction, whatever eigh's basis.
    w_q = torch.zeros(4, 3, dtype=torch.float64)
    w_k = torch.zeros(4, 3, dtype=torch.float64)
    w_q[:, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    w_k[:, 0] = torch.tensor([0.0, 0.0, 0.0, 3.0])
    w_k[:, 1] = torch.tensor([0.0, 2.0, 0.0, 0.0])
    for seed in range(5):
        r = random_orthogonal(3, seed)
        deltas = sorted(rotation_deltas(w_q @ r, w_k @ r).tolist())
        assert deltas == pytest.approx([0.0, 4.0, 8.0], abs=1e-9)   # |0-0|, |0-4|, |1-9|


def test_per_layer_and_per_head_counts():
    params = batch(0, 1, n_layers=2, heads=2, d_k=2)
    params[3] = params[4] = torch.zeros_like(params[3])        # collapse layer 1 of both models
    params[0][0, 1] = params[1][0, 1]                          # model 0: layer 0, head 1 symmetric
    th = {k: torch.full((2,), v, dtype=torch.float64) for k, v in {**TH, "delta_threshold": 1e-6}.items()}
    x = torch.randn(2, 10, 4, CFG["input_dim"] + 1, dtype=torch.float64)
    out = measure(params, x, th, 2, 2, 2, True)
    assert out["layer_n_dos"] == [[2, 4], [0, 4]]
    assert out["layer_n_dosb"] == [[2, 0], [4, 0]]
    assert out["n_dos"] == [2, 0]
    assert out["layer_qk_rank"] == [[4, 0], [4, 0]]            # two heads of d_k = 2 add up to D = 4
    assert [len(d) for d in out["deltas"]] == [2, 2]
    assert min(out["deltas"][0]) > 1e-6                        # head 0's, not the symmetric head 1's


def test_ranks_of_the_readout_and_the_representation():
    dim = 4
    w = torch.randn(dim, 2, dtype=torch.float64)
    x = torch.randn(1, 30, 5, dim, dtype=torch.float64)
    assert metrics(w, w, x=x)["weight_rank"] == 1
    assert metrics(w, w, x=x, w_out=torch.zeros(dim, 1, dtype=torch.float64))["weight_rank"] == 0
    assert metrics(w, w, x=x)["rep_rank"] == dim
    # without the residual, W_V of rank 1 leaves a final representation of rank 1
    w_v = torch.outer(torch.randn(dim, dtype=torch.float64), torch.randn(dim, dtype=torch.float64))
    params = [w[None, None], w[None, None], w_v[None, None], torch.ones(1, dim, 1, dtype=torch.float64)]
    th = {k: torch.tensor([v], dtype=torch.float64) for k, v in TH.items()}
    assert measure(params, x[0], th, 1, 1, 2, False)["rep_rank"] == [1]
    rep = final_token(params, x, 1, 1, 2, False)[0] / 30**0.5
    assert torch.linalg.matrix_rank(rep).item() == 1


def test_rep_rank_scales_the_representation_by_sqrt_n_test():
    # W_V = 0: the final token's representation is the final input token, built with singular
    # values (2, 2, 0.5, 0.5) after dividing by sqrt(n); an absolute cut of 1 keeps two of them.
    n, dim = 50, 4
    basis, _ = torch.linalg.qr(torch.randn(n, dim, dtype=torch.float64))
    x = torch.randn(1, n, 3, dim, dtype=torch.float64)
    x[0, :, -1] = basis * torch.tensor([2.0, 2.0, 0.5, 0.5], dtype=torch.float64) * n**0.5
    w = torch.randn(dim, 2, dtype=torch.float64)
    zero_v = torch.zeros(dim, dim, dtype=torch.float64)
    assert metrics(w, w, x=x, w_v=zero_v, rank_tol=0.0, rank_atol=1.0)["rep_rank"] == 2
    assert metrics(w, w, x=x, w_v=zero_v, rank_tol=0.0, rank_atol=0.1)["rep_rank"] == 4


def test_measure_returns_the_metric_columns_with_the_neuron_ones_null():
    params = batch(0, 1)
    th = {k: torch.full((2,), v, dtype=torch.float64) for k, v in TH.items()}
    out = measure(params, torch.randn(10, 4, CFG["input_dim"] + 1), th, 2, 2, 2, True)
    assert list(out) == list(columns.METRICS)
    assert all(len(v) == 2 for v in out.values())
    neuron = ("n_distinct", "n_dead", "symmetry_class", "layer_n_distinct", "layer_n_dead", "layer_symmetry_class",
              "layer_groups", "layer_weight_rank")
    assert all(out[k] == [None, None] for k in neuron)
    assert all(out[k][0] is not None for k in columns.METRICS if k not in neuron)


# ---- in-context linear regression ----

def task(**overrides):
    return make_data({**TASK, **overrides}, torch.float64)


def context_weights(x: torch.Tensor) -> torch.Tensor:
    """w of each sequence (n, d) by least squares on its visible context tokens."""
    ctx = x[:, :-1]
    return torch.linalg.lstsq(ctx[..., :-1], ctx[..., -1:]).solution[..., 0]


def test_icl_shapes_and_dtype():
    data = make_data(TASK, torch.float32)
    assert data["x_train"].shape == (40, 6, 4) and data["y_train"].shape == (40, 1)
    assert data["x_test"].shape == (30, 6, 4) and data["y_test"].shape == (30, 1)
    assert all(v.dtype == torch.float32 for v in data.values())


def test_the_final_label_is_hidden_and_is_the_target():
    data = task()
    for split in ("train", "test"):
        x, y = data[f"x_{split}"], data[f"y_{split}"]
        assert torch.all(x[:, -1, -1] == 0)
        assert torch.all(x[:, :-1, -1] != 0)
        w = context_weights(x)                                   # n_ctx - 1 = 5 > d = 3
        torch.testing.assert_close(torch.einsum("nd,nd->n", w, x[:, -1, :-1])[:, None], y)


def test_teacher_rank_sets_the_span_of_the_weights():
    for rank, expected in ((1, 1), (2, 2), (3, 3), (None, 3)):
        w = context_weights(task(teacher_rank=rank, n_train=50)["x_train"])
        assert torch.linalg.matrix_rank(w, rtol=1e-8).item() == expected


def test_full_teacher_rank_is_no_structure():
    full, unstructured = task(teacher_rank=3), task(teacher_rank=None)
    assert all(torch.equal(full[k], unstructured[k]) for k in full)


def test_weights_have_unit_expected_norm_and_zero_prediction_loss_is_input_scale_squared():
    for rank in (None, 1, 2):
        data = task(input_dim=4, n_ctx=6, n_train=4000, n_test=20000, teacher_rank=rank, input_scale=2.0)
        norms = context_weights(data["x_train"]).pow(2).sum(dim=1)
        assert norms.mean().item() == pytest.approx(1.0, rel=0.08)
        loss = data["y_test"].pow(2).mean().item()
        assert loss == pytest.approx(predict_zero_loss({**TASK, "input_scale": 2.0}), rel=0.08)
    assert predict_zero_loss({**TASK, "input_scale": 2.0}) == 4.0


def test_label_noise_only_on_the_train_labels():
    clean, noisy = task(), task(sigma=0.5)
    assert torch.equal(clean["x_test"], noisy["x_test"]) and torch.equal(clean["y_test"], noisy["y_test"])
    assert torch.equal(clean["x_train"][..., :-1], noisy["x_train"][..., :-1])     # inputs untouched
    assert torch.all(noisy["x_train"][:, -1, -1] == 0)                             # still hidden
    context_noise = noisy["x_train"][:, :-1, -1] - clean["x_train"][:, :-1, -1]
    target_noise = noisy["y_train"] - clean["y_train"]
    assert context_noise.std().item() == pytest.approx(0.5, rel=0.15)
    assert target_noise.std().item() == pytest.approx(0.5, rel=0.3)
    assert all(torch.equal(clean[k], task(sigma=0.5, noise_on="fresh_labels")[k]) for k in clean)


def test_seed_and_data_seed():
    a, again, other = task(seed=0), task(seed=0), task(seed=1)
    assert all(torch.equal(a[k], again[k]) for k in a)
    assert not torch.equal(a["x_train"], other["x_train"])
    fixed_0, fixed_1 = task(seed=0, data_seed=7), task(seed=1, data_seed=7)
    assert all(torch.equal(fixed_0[k], fixed_1[k]) for k in a)
    assert not torch.equal(fixed_0["x_train"], a["x_train"])

"""Symmetry metrics on hand-built weights with known answers."""

import torch

from phasemap.symmetry import canonical_groups, measure, partition_string

TH = dict(delta_threshold=0.1, dead_threshold=1e-3, dead_relative=0.05, distinct_threshold=0.1,
          rank_tol=1e-3, rank_atol=1e-3)


def metrics(w_in, w_out, activation="tanh", x=None, **overrides):
    """Measure one model with first-layer weights w_in (d, h) and w_out (h, k)."""
    th = {k: torch.tensor([v], dtype=torch.float64) for k, v in {**TH, **overrides}.items()}
    x = torch.randn(1, 50, w_in.shape[0], dtype=torch.float64) if x is None else x
    out = measure([w_in[None].double(), w_out[None].double()], [], x, activation, th)
    return {k: v[0] for k, v in out.items()}


def neurons(*vectors, d=3):
    """Weights from neuron vectors [incoming (d), outgoing (1)]."""
    v = torch.tensor(vectors, dtype=torch.float64)
    return v[:, :d].T.contiguous(), v[:, d:].contiguous()


def test_duplicated_neurons_form_one_group():
    a, b, c = [1.0, 0.0, 0.0, 1.0], [0.0, 2.0, 0.0, -1.0], [0.0, 0.0, 1.0, 0.5]
    m = metrics(*neurons(a, a, b, c))
    assert m["n_distinct"] == 3
    assert m["n_dead"] == 0
    assert m["symmetry_class"] == "2x1,1x2|d0"
    assert m["layer_groups"] == [[0, 0, 1, 2]]


def test_dead_neurons_are_counted_and_left_out_of_groups():
    a, b, zero = [1.0, 0.0, 0.0, 1.0], [0.0, 2.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]
    tiny = [1e-5, 0.0, 0.0, 0.0]
    m = metrics(*neurons(a, zero, b, tiny))
    assert (m["n_dead"], m["n_distinct"]) == (2, 2)
    assert m["symmetry_class"] == "1x2|d2"
    assert m["layer_groups"] == [[0, -1, 1, -1]]


def test_relative_dead_threshold():
    big, small = [10.0, 0.0, 0.0, 10.0], [0.0, 0.1, 0.0, 0.1]   # small is 1% of big
    assert metrics(*neurons(big, small))["n_dead"] == 1
    assert metrics(*neurons(big, small), dead_relative=0.001)["n_dead"] == 0


def test_sign_flipped_copies_are_one_group_only_for_odd_activations():
    a = [1.0, -0.5, 0.3, 2.0]
    minus_a = [-x for x in a]
    b = [0.0, 1.0, 1.0, -1.0]
    assert metrics(*neurons(a, minus_a, b), activation="tanh")["n_distinct"] == 2
    assert metrics(*neurons(a, minus_a, b), activation="relu")["n_distinct"] == 3


def test_a_chain_of_near_identical_neurons_is_one_group_in_any_order():
    # consecutive neurons differ by 6% of their norm (< 10%), the ends by ~30% (> 10%)
    chain = [[1.0 + 0.06 * i, 0.0, 0.0, 1.0] for i in range(6)]
    far = [0.0, 3.0, 0.0, 0.0]
    assert metrics(*neurons(chain[0], chain[-1]))["n_distinct"] == 2  # the ends alone are distinct
    forward = metrics(*neurons(*chain, far))
    shuffled = metrics(*neurons(chain[3], far, chain[0], chain[5], chain[1], chain[4], chain[2]))
    assert forward["n_distinct"] == shuffled["n_distinct"] == 2
    assert forward["symmetry_class"] == shuffled["symmetry_class"] == "6x1,1x1|d0"


def test_norm_neighbour_deltas_and_n_dos():
    # norms 1, 1.05, 3, 3 -> sorted neighbour distances: ~0.05 (same direction), far, 0
    a = [1.0, 0.0, 0.0, 0.0]
    a2 = [1.05, 0.0, 0.0, 0.0]
    c = [0.0, 3.0, 0.0, 0.0]
    m = metrics(*neurons(a, c, a2, c))
    assert m["deltas"][0] == pytest_approx(0.05)
    assert m["deltas"][2] == pytest_approx(0.0)
    assert m["n_dos"] == 2 and m["n_dosb"] == 2
    assert metrics(*neurons(a, c, a2, c), delta_threshold=0.01)["n_dos"] == 1


def test_weight_rank_of_a_rank_k_product():
    torch.manual_seed(1)
    for k in (1, 2, 3):
        w_in = torch.randn(6, 8, dtype=torch.float64)
        w_out = torch.zeros(8, 5, dtype=torch.float64)
        w_out[:k] = torch.randn(k, 5, dtype=torch.float64)   # only k neurons reach the output
        m = metrics(w_in, w_out, activation="linear")
        assert m["weight_rank"] == k
        assert m["layer_weight_rank"] == [6, k]


def test_rank_tolerances():
    w_in = torch.eye(3, dtype=torch.float64)
    w_out = torch.diag(torch.tensor([1.0, 0.1, 1e-5], dtype=torch.float64))
    assert metrics(w_in, w_out, activation="linear")["weight_rank"] == 2
    assert metrics(w_in, w_out, activation="linear", rank_tol=0.5)["weight_rank"] == 1


def test_representation_rank():
    # relu of a rank-2 input through 4 neurons where two are copies: 3 distinct directions
    x = torch.randn(1, 200, 3, dtype=torch.float64)
    x[..., 2] = 0.0
    w_in = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    w_out = torch.ones(4, 1, dtype=torch.float64)
    assert metrics(w_in, w_out, activation="linear", x=x)["rep_rank"] == 2
    assert metrics(w_in, w_out, activation="relu", x=x)["rep_rank"] == 3


def test_thresholds_apply_per_model_in_a_batch():
    a, a_close = [1.0, 0.0, 0.0, 1.0], [1.05, 0.0, 0.0, 1.0]
    w_in, w_out = neurons(a, a_close)
    th = {k: torch.tensor([v, v], dtype=torch.float64) for k, v in TH.items()}
    th["distinct_threshold"] = torch.tensor([0.1, 0.01], dtype=torch.float64)
    out = measure([torch.stack([w_in, w_in]), torch.stack([w_out, w_out])], [],
                  torch.randn(2, 10, 3, dtype=torch.float64), "tanh", th)
    assert out["n_distinct"] == [1, 2]


def test_biases_are_part_of_the_neuron():
    w_in, w_out = neurons([1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0])
    th = {k: torch.tensor([v], dtype=torch.float64) for k, v in TH.items()}
    biases = [torch.tensor([[[0.0, 5.0]]], dtype=torch.float64), torch.zeros(1, 1, 1, dtype=torch.float64)]
    out = measure([w_in[None], w_out[None]], biases, torch.randn(1, 10, 3, dtype=torch.float64), "tanh", th)
    assert out["n_distinct"] == [2]


def test_every_hidden_layer_is_measured():
    th = {k: torch.tensor([v], dtype=torch.float64) for k, v in TH.items()}
    w1 = torch.tensor([[[1.0, 1.0, 0.0]]], dtype=torch.float64)          # 1 -> 3, neurons 0,1 equal
    w2 = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)  # 3 -> 2
    w3 = torch.tensor([[[1.0], [0.0]]], dtype=torch.float64)             # 2 -> 1
    out = measure([w1, w2, w3], [], torch.randn(1, 10, 1, dtype=torch.float64), "tanh", th)
    assert out["layer_n_dead"] == [[1, 1]]
    assert out["layer_n_distinct"] == [[1, 1]]
    assert out["n_distinct"] == [1]


def test_partition_string_is_canonical():
    assert partition_string([0, 0, 2, -1, 4, 4]) == partition_string([5, -1, 5, 1, 1, 3]) == "2x2,1x1|d1"
    assert partition_string([0, 0, 0]) != partition_string([0, 0, 2])
    assert partition_string([-1, -1]) == "|d2"
    assert canonical_groups([7, 7, -1, 3, 7]) == [0, 0, -1, 1, 0]


def pytest_approx(value):
    import pytest
    return pytest.approx(value, abs=1e-9)

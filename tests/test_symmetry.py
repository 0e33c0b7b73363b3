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


def test_sign_flipped_copies_are_symmetric_pairs_for_odd_activations():
    # one neuron and its negatives, norm ties broken so that the sort interleaves +v and -v
    v = torch.tensor([0.6, -0.3, 0.2, 0.8], dtype=torch.float64)
    signs = [1, -1, 1, -1, 1, -1, 1, -1]
    copies = [(s * v * (1 + 1e-4 * i)).tolist() for i, s in enumerate(signs)]
    odd = metrics(*neurons(*copies))
    assert odd["n_distinct"] == 1 and odd["n_dead"] == 0
    assert odd["n_dos"] == len(copies) - 1 and odd["n_dosb"] == 1
    assert max(odd["deltas"]) < 0.01
    plain = metrics(*neurons(*copies), sign_identify=False)     # the paper's plain distance
    assert plain["n_dos"] == 0 and min(plain["deltas"]) > 2 * v.norm().item() * 0.99
    relu = metrics(*neurons(*copies), activation="relu")        # -v is another function under relu
    assert relu["n_distinct"] == 2 and relu["n_dos"] == 0


def test_dead_pairs_are_symmetric_and_a_dead_live_pair_is_broken():
    big = [4.0, 0.0, 0.0, 4.0]
    # 5% of the largest norm (0.28) is the dead cut: these are dead, though 0.1 and more apart
    dead = [[0.1, 0.0, 0.0, 0.0], [0.0, -0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.15], [0.0, 0.12, 0.0, 0.0]]
    m = metrics(*neurons(big, *dead, [0.0, 3.0, 0.0, 0.0]), activation="relu")
    assert m["n_dead"] == 4 and m["n_distinct"] == 2
    # sorted: 4 dead (3 pairs, all symmetric), then two live neurons far apart (broken)
    assert m["n_dos"] == 3
    # a live neuron next to a dead one by norm, closer than delta_threshold: still a broken pair
    near = metrics(*neurons([10.0, 0.0, 0.0, 0.0], [0.45, 0.0, 0.0, 0.0], [0.52, 0.0, 0.0, 0.0]),
                   activation="relu")
    assert near["n_dead"] == 1 and near["n_dos"] == 0


def test_relative_delta_does_not_move_with_the_weight_scale():
    a, a_close, b = [1.0, 0.0, 0.0, 1.0], [1.04, 0.0, 0.0, 1.0], [0.0, 1.5, 0.0, -1.0]
    for scale in (0.5, 1.0, 10.0):
        w_in, w_out = neurons(*[[scale * x for x in n] for n in (a, a_close, b)])
        assert metrics(w_in, w_out, delta_relative=True)["n_dos"] == 1
    # the absolute Delta does move: at 10x the close pair is 0.4 apart
    assert metrics(*neurons(*[[10 * x for x in n] for n in (a, a_close, b)]))["n_dos"] == 0


def _random_layer(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer of a few prototype neurons, each copied (with random signs and small noise) a few
    times, plus dead neurons: the cases where the two metrics could disagree."""
    h, d = int(torch.randint(2, 12, (1,), generator=gen)), 3
    protos = torch.randn(int(torch.randint(1, 4, (1,), generator=gen)), d + 1, generator=gen, dtype=torch.float64)
    protos *= 10 ** (2 * torch.rand(len(protos), 1, generator=gen, dtype=torch.float64) - 1)
    pick = torch.randint(0, len(protos), (h,), generator=gen)
    sign = torch.where(torch.rand(h, 1, generator=gen) < 0.5, -1.0, 1.0).double()
    noise = 0.1 * torch.rand(h, 1, generator=gen, dtype=torch.float64) * torch.randn(h, d + 1, generator=gen,
                                                                                       dtype=torch.float64)
    vec = sign * protos[pick] * (1 + noise)
    dead = torch.rand(h, generator=gen) < 0.2
    vec[dead] *= 1e-4
    return vec[:, :d].T.contiguous(), vec[:, d:].contiguous()


def _one_clique(w_in: torch.Tensor, w_out: torch.Tensor, odd: bool) -> bool:
    """Every two neurons within the grouping threshold of each other (v or -v for odd activations)."""
    vec = torch.cat([w_in.T, w_out], dim=1)
    dist = torch.cdist(vec, vec)
    if odd:
        dist = torch.minimum(dist, torch.cdist(vec, -vec))
    norms = vec.norm(dim=1)
    return bool((dist < 0.999 * TH["distinct_threshold"] * torch.maximum(norms[:, None], norms[None, :])).all())


def test_relative_n_dos_never_contradicts_the_groups():
    # With delta_relative and delta_threshold <= distinct_threshold, a symmetric pair of live
    # neurons is one group and the dead are a run of their own, so every group (and the dead)
    # starts at least one run of symmetric norm-neighbours: n_dosb >= n_distinct + (any dead).
    # A layer of one clique of live neurons and no dead one is symmetric throughout.
    gen = torch.Generator().manual_seed(7)
    cliques = 0
    for _ in range(300):
        w_in, w_out = _random_layer(gen)
        width = w_in.shape[1]
        for activation in ("tanh", "relu"):
            m = metrics(w_in, w_out, activation=activation, delta_relative=True)
            assert m["n_dosb"] >= max(1, m["n_distinct"] + (m["n_dead"] > 0)), (activation, m)
            if m["n_dead"] == 0 and _one_clique(w_in, w_out, activation == "tanh"):
                cliques += 1
                assert (m["n_distinct"], m["n_dos"]) == (1, width - 1), (activation, m)
    assert cliques >= 10       # the generator does produce the exact case


def test_a_layer_of_sign_copies_has_n_dos_width_minus_one_in_either_mode():
    gen = torch.Generator().manual_seed(3)
    for _ in range(100):
        width = int(torch.randint(2, 40, (1,), generator=gen))
        v = torch.randn(4, generator=gen, dtype=torch.float64)
        v *= 0.5 / v.norm()          # within delta_threshold in absolute terms too
        signs = torch.where(torch.rand(width, 1, generator=gen) < 0.5, -1.0, 1.0).double()
        vec = signs * v * (1 + 0.01 * torch.randn(width, 4, generator=gen, dtype=torch.float64))
        for relative in (False, True):
            m = metrics(vec[:, :3].T.contiguous(), vec[:, 3:].contiguous(), delta_relative=relative)
            assert (m["n_distinct"], m["n_dead"], m["n_dos"]) == (1, 0, width - 1)


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


def test_sign_identify_and_delta_relative_apply_per_model_in_a_batch():
    v = [1.0, -0.5, 0.3, 2.0]
    w_in, w_out = neurons(v, [-x for x in v], [2 * x for x in v])
    th = {k: torch.tensor([v, v, v], dtype=torch.float64) for k, v in TH.items()}
    th["sign_identify"] = torch.tensor([True, False, True])
    th["delta_relative"] = torch.tensor([False, False, True])
    th["delta_threshold"] = torch.tensor([0.1, 0.1, 0.6], dtype=torch.float64)
    out = measure([torch.stack([w_in] * 3), torch.stack([w_out] * 3)], [],
                  torch.randn(3, 10, 3, dtype=torch.float64), "tanh", th)
    assert out["n_dos"] == [1, 0, 2]       # +-v only with sign_identify; v to 2v only relatively (0.5)


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

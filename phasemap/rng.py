"""Randomness that depends only on a model's own seed, never on which models share its batch.

Setup-time draws (teacher, data, student init) use a torch.Generator per model, seeded by
`derive_seed(seed, purpose)`. Per-step draws (minibatches, input noise) use a counter-based
hash of (model key, step, index), so a batch of M models needs no per-model Python per step
and a model draws the same numbers alone or among 255 others.
"""

from __future__ import annotations

import hashlib
import math

import torch

_MASK32 = 0xFFFFFFFF


def derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for one purpose ("data", "student", "sgd"), from a run's seed."""
    digest = hashlib.blake2b(f"{seed}:{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # (x * c) mod 2**32 without int64 overflow: split c into 16-bit halves.
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def _counter(keys: torch.Tensor, step: int, n: int) -> torch.Tensor:
    """(M, n) well-mixed 32-bit values for models `keys` (M,) at `step`."""
    base = hash32((keys & _MASK32) ^ hash32(torch.tensor(step & _MASK32, device=keys.device)))
    base = hash32(base ^ (keys >> 32))
    idx = torch.arange(n, device=keys.device, dtype=torch.int64)
    return hash32((base[:, None] + idx[None, :] * 0x9E3779B9) & _MASK32)


def subset(keys: torch.Tensor, step: int, n: int, k: int) -> torch.Tensor:
    """(M, k) sample indices: the first k of a per-model random permutation of range(n).

    A model whose batch size is s <= k uses the first s columns, which do not depend on k.
    """
    # Hash in the high bits, index in the low 20: all keys distinct, so no ties to break.
    sort_keys = (_counter(keys, step, n) << 20) | torch.arange(n, device=keys.device)
    return torch.topk(sort_keys, k, dim=1, largest=False, sorted=True).indices


def normal(keys: torch.Tensor, step: int, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    """(M, *shape) standard normal draws by Box-Muller on two counter streams."""
    n = math.prod(shape)
    u1 = (_counter(keys, 2 * step, n).to(torch.float64) + 0.5) / 2**32
    u2 = (_counter(keys, 2 * step + 1, n).to(torch.float64) + 0.5) / 2**32
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)
    return z.to(dtype).reshape(keys.shape[0], *shape)

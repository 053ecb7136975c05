"""Split a dataset across simulated clients: IID, or non-IID with a Dirichlet prior over each label's share.

Written here (25 lines of numpy) rather than taken from flwr-datasets, whose partitioners need a Hugging Face
``datasets.Dataset`` and pull that stack in; the scheme is the usual one (Hsu et al. 2019, arXiv:1909.06335):
for every label, draw client shares from Dir(alpha) and deal that label's rows out accordingly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["partition"]


def partition(labels: Sequence[int], clients: int, alpha: float | None, seed: int = 0) -> list[np.ndarray]:
    """Row indices for each of ``clients`` clients; every client gets at least one row.

    ``alpha`` None deals rows out uniformly at random (IID); a small alpha (0.1) gives each client few labels,
    a large one (100) is close to IID.
    """
    n = len(labels)
    if clients <= 0:
        raise ConfigError(f"`clients` must be > 0, got {clients}")
    if alpha is not None and alpha <= 0:
        raise ConfigError(f"`alpha` must be > 0, got {alpha}")
    if n < clients:
        raise DataError(
            f"the dataset has {n} train rows, too few to give each of {clients} clients one; "
            "use fewer clients or more data"
        )
    rng = np.random.default_rng(seed)
    if alpha is None:
        return [np.sort(part) for part in np.array_split(rng.permutation(n), clients)]
    y = np.asarray(labels)
    parts: list[list[int]] = [[] for _ in range(clients)]
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        shares = rng.dirichlet(np.full(clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
        for client, chunk in enumerate(np.split(rows, cuts)):
            parts[client].extend(chunk.tolist())
    # a client with no rows cannot train; give it one row from the largest client (changes the skew negligibly)
    for client in range(clients):
        if not parts[client]:
            donor = max(range(clients), key=lambda c: len(parts[c]))
            parts[client].append(parts[donor].pop())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]

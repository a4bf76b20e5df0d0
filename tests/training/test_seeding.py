"""`mix_seed`: the one seed mixer; stable values (resume depends on them) and distinct streams."""

from __future__ import annotations

import itertools

from lapa.training.seeding import mix_seed


def test_mix_seed_is_stable_across_runs_and_versions():
    # Pinned: a change here changes every derived stream (data order, augmentation, model noise) and so
    # breaks resuming a run started before the change.
    assert mix_seed(42) == 6324500538530646356
    assert mix_seed(42, 5, 1) == 5282432723683026096
    assert mix_seed(42, 5, 1) == mix_seed(42, 5, 1)


def test_distinct_tuples_give_distinct_63_bit_seeds():
    tuples = [t for n in (1, 2, 3) for t in itertools.product(range(6), repeat=n)]
    seeds = [mix_seed(*t) for t in tuples]
    assert len(set(seeds)) == len(tuples)  # order, length and values all matter: (1, 2) != (2, 1) != (1, 2, 0)
    assert all(0 <= s < 2**63 for s in seeds)
    assert mix_seed(1, 2) != mix_seed(2, 1) and mix_seed(1, 2) != mix_seed(1, 2, 0)

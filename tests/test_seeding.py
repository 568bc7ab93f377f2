"""One seeding scheme: derive_seed(seed, stream, *keys) through numpy's SeedSequence."""

import numpy as np
import pytest
import torch

from vldd.core import seeding


def test_derive_seed_is_seedsequence_of_the_keys_and_fits_a_torch_seed():
    expected = int(np.random.SeedSequence([7, seeding.IMAGE, 3, 1]).generate_state(2, dtype=np.uint32)
                   .view(np.uint64)[0] >> np.uint64(1))
    assert seeding.derive_seed(7, seeding.IMAGE, 3, 1) == expected
    assert 0 <= expected < 2**63
    torch.Generator().manual_seed(expected)  # accepted by torch


def test_streams_and_keys_give_different_seeds():
    seeds = {seeding.derive_seed(0, stream, 1, 2) for stream in (seeding.CAPTION, seeding.VAE_SAMPLE, seeding.IMAGE)}
    assert len(seeds) == 3
    assert seeding.derive_seed(0, seeding.IMAGE, 1, 2) != seeding.derive_seed(0, seeding.IMAGE, 2, 1)
    assert seeding.derive_seed(0, seeding.IMAGE, 1, 2) != seeding.derive_seed(1, seeding.IMAGE, 1, 2)


def test_stream_ids_are_distinct_and_never_renumbered():
    streams = {name: value for name, value in vars(seeding).items() if name.isupper() and isinstance(value, int)}
    assert len(set(streams.values())) == len(streams)
    assert (seeding.CAPTION, seeding.VAE_SAMPLE, seeding.KMEANS, seeding.IMAGE) == (1, 2, 3, 4)


def test_generators_depend_only_on_their_own_key():
    together = seeding.generators(5, seeding.IMAGE, [(0, 0), (0, 1), 9])
    alone = seeding.generators(5, seeding.IMAGE, [(0, 1)])
    draws = [torch.randn(4, generator=g) for g in together]
    assert torch.equal(draws[1], torch.randn(4, generator=alone[0]))
    assert not torch.equal(draws[0], draws[1])
    assert torch.equal(draws[2], torch.randn(4, generator=seeding.generator(5, seeding.IMAGE, 9)))


def test_negative_keys_are_refused():
    with pytest.raises(ValueError, match=r"non-negative integers, got \(0, 1, -3\)"):
        seeding.derive_seed(0, 1, -3)

"""A solved layer written into its dense block in place computes what the assembled compressed model computes."""

from __future__ import annotations

import copy

import pytest
import torch
from modeling_fixtures import MODEL_TYPES, make_dense, random_solutions

from pipeline.adapters import adapter_for
from pipeline.assembly import apply_solution_in_place, build_compressed_model


@pytest.mark.parametrize("family", MODEL_TYPES)
def test_in_place_solution_matches_the_assembled_model(family: str) -> None:
    dense = make_dense(family)
    adapter = adapter_for(dense)
    plans, solutions = random_solutions(adapter)
    assembled = build_compressed_model(dense, adapter, plans, solutions)
    edited = copy.deepcopy(dense)
    edited_adapter = adapter_for(edited)
    shapes = {n: tuple(p.shape) for n, p in edited.named_parameters()}
    for i, solution in enumerate(solutions):
        apply_solution_in_place(edited_adapter.layer(i), solution, edited_adapter.head_layout())
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got, before = assembled(ids).logits, edited(ids).logits, dense(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(before, want, atol=1e-3)  # the solutions change the function
    # Dense shapes and the dense parameter set throughout (a folded value bias on a bias-free o is added to its
    # output, not as a new parameter), so parameter counts read off the edited model stay the dense ones.
    assert shapes == {n: tuple(p.shape) for n, p in edited.named_parameters()}

"""``extract --against``: TraitCosines.save / load round-trips cosines.json and cosines.md, and the loaded cosines
redraw the figure the CLI writes."""

from __future__ import annotations

import json

import torch

from persona_lens.core.vectors import PersonaVector
from persona_lens.experiments.extract import TraitCosines, trait_cosines
from persona_lens.viz.controls import cosines_figures
from tests.results.helpers import figure_json, folder_bytes


def _vectors():
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(5, 16, generator=generator)
    return [
        PersonaVector("evil", "m", base),
        PersonaVector("kind", "m", -base + 0.3 * torch.randn(5, 16)),
        PersonaVector("other", "m", torch.randn(5, 16, generator=generator)),
    ]


def test_save_load_and_redraw(tmp_path):
    fresh = trait_cosines(_vectors(), controls=20, control_seed=1)
    assert sorted(p.name for p in fresh.save(tmp_path / "a")) == ["cosines.json", "cosines.md"]
    loaded = TraitCosines.load(tmp_path / "a")
    assert json.dumps(loaded.to_json()) == json.dumps(fresh.to_json())
    loaded.save(tmp_path / "b")
    assert folder_bytes(tmp_path / "b") == folder_bytes(tmp_path / "a")
    assert set(cosines_figures(fresh)) == {"cosines.html"}
    assert figure_json(cosines_figures(loaded)) == figure_json(cosines_figures(fresh))


def test_without_controls_the_band_round_trips_as_missing(tmp_path):
    fresh = trait_cosines(_vectors()[:2], controls=0)
    fresh.save(tmp_path)
    loaded = TraitCosines.load(tmp_path)
    assert all(low != low and high != high for low, high in loaded.random_band)  # NaN: no random directions
    assert figure_json(cosines_figures(loaded)) == figure_json(cosines_figures(fresh))

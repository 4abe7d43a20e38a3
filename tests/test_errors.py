"""One exception base: every public persona_lens error derives from ``persona_lens.Error`` and from the builtin it
derived from before, and ``except persona_lens.Error`` catches a real failure raised by each package."""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil

import pytest
import torch

import persona_lens
from tests.conftest import load_cached

# the builtin each class derived from before the common base: code that catches it keeps working
BUILTIN = {
    "TraitError": ValueError,
    "RoleError": ValueError,
    "TraitGenerationError": RuntimeError,
    "MissingAPIKeyError": RuntimeError,
    "JudgeAuthError": RuntimeError,
    "BadInput": Exception,
    "WorkerLost": RuntimeError,
    "RoleNotPlayed": ValueError,
    "NonFiniteLossError": ValueError,
    "TemplateBoundaryError": ValueError,
    "BadValue": ValueError,
    "EngineError": RuntimeError,
    "EngineMismatch": ValueError,
    "UnreadablePositions": ValueError,
    "VectorMismatchError": ValueError,
    "VectorFileError": ValueError,
    "FolderBusy": RuntimeError,
    "ResultFileError": ValueError,
    "EngineHookError": RuntimeError,
    "EngineUnavailable": RuntimeError,
    "UnsafeOutput": ValueError,
    "UnreadableFile": ValueError,
}


def _public_error_classes() -> dict[str, type[BaseException]]:
    """Every public exception class defined in a persona_lens module (found by walking the package)."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(persona_lens.__path__, "persona_lens."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
                and not name.startswith("_")
                and value is not persona_lens.Error
            ):
                found[name] = value
    return found


def test_every_public_error_class_derives_from_the_one_base_and_keeps_its_builtin():
    classes = _public_error_classes()
    assert set(classes) == set(BUILTIN), "a new error class: give it persona_lens.Error as a base and list it here"
    for name, cls in classes.items():
        assert issubclass(cls, persona_lens.Error), name
        assert issubclass(cls, BUILTIN[name]), name


def test_the_base_is_reachable_from_the_root_and_is_an_exception():
    from persona_lens.core.errors import Error

    assert persona_lens.Error is Error and issubclass(Error, Exception)
    assert "Error" in persona_lens.__all__


def _core_failure(tmp_path):
    bad = tmp_path / "not-a-vector.safetensors"
    bad.write_bytes(b"not safetensors")
    persona_lens.load_vector(bad)


def _judges_failure(tmp_path, monkeypatch):
    from persona_lens.judges.claude import require_api_key

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    require_api_key()


def _traits_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONA_LENS_TRAITS", str(tmp_path))
    persona_lens.load_trait("no-such-trait-anywhere")


def _experiments_failure(tmp_path):
    from persona_lens.experiments.finetune import FinetuneConfig, TrainingIntervention, finetune

    model = load_cached("tiny-llama")
    data = [[{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": f"a {i}"}] for i in range(2)]
    huge = TrainingIntervention("steer", torch.ones(model.cfg.n_layers + 1, model.cfg.d_model), layer=1, coef=3e38)
    finetune(
        model,
        data,
        FinetuneConfig(batch_size=2, lr=1e-3),
        output_dir=tmp_path / "ft",
        interventions=[huge],
        progress=False,
    )


def _cli_failure(tmp_path):
    from persona_lens.cli.scale import executor_from_args

    executor_from_args(argparse.Namespace(engine="http://127.0.0.1:1", ray="local"))


@pytest.mark.parametrize("package", ["core", "judges", "traits", "experiments", "cli"])
def test_except_error_catches_a_real_failure_from_each_package(package, tmp_path, monkeypatch):
    failures = {
        "core": lambda: _core_failure(tmp_path),
        "judges": lambda: _judges_failure(tmp_path, monkeypatch),
        "traits": lambda: _traits_failure(tmp_path, monkeypatch),
        "experiments": lambda: _experiments_failure(tmp_path),
        "cli": lambda: _cli_failure(tmp_path),
    }
    with pytest.raises(persona_lens.Error) as caught:
        failures[package]()
    assert type(caught.value).__module__.startswith("persona_lens.")
    assert str(caught.value)  # today's message, not an empty wrapper

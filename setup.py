"""Build hook: ship the top-level ``scorers/``, ``recipes/`` and ``assets/`` folders inside the wheel.

In a checkout they are read from the repository root; in an installed wheel from
``mmalign/_shipped/`` (see ``mmalign.paths``).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("scorers", "recipes", "assets")


class BuildWithShippedData(build_py):
    def run(self):
        super().run()
        root = Path(__file__).parent
        target = Path(self.build_lib) / "mmalign" / "_shipped"
        for name in SHIPPED:
            if (root / name).is_dir():
                shutil.copytree(root / name, target / name, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithShippedData})

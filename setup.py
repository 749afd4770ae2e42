"""Copy the top-level templates/ into the wheel as broker/templates (pyproject holds the rest)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithTemplates(build_py):
    """build_py that also ships the checkout's templates inside the package."""

    def run(self) -> None:
        super().run()
        source = Path(__file__).parent / "templates"
        if source.is_dir():
            target = Path(self.build_lib) / "broker" / "templates"
            shutil.copytree(source, target, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithTemplates})

"""The built package: what a workbench install, the image's `pip install .` and `pip wheel` get holds every module."""

import subprocess
import sys
import zipfile

from tests.conftest import REPO


def test_the_wheel_holds_every_module_of_the_source_tree(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path), str(REPO)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("model_pipelines-*.whl")
    packaged = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")}
    source = {path.relative_to(REPO).as_posix() for package in ("components", "pipelines") for path in (REPO / package).rglob("*.py")}
    assert source - packaged == set(), "modules missing from the wheel: list their packages in pyproject.toml"

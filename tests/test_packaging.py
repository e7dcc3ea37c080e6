"""The built package: what a workbench install, the image's `pip install .` and `pip wheel` get holds every module and
the built-in model specs."""

import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory) -> set[str]:
    """Return the names of the files in a wheel built from the source tree."""
    directory = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(directory), str(REPO)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = directory.glob("model_pipelines-*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


def test_the_wheel_holds_every_module_of_the_source_tree(wheel_files):
    packaged = {name for name in wheel_files if name.endswith(".py")}
    source = {path.relative_to(REPO).as_posix() for package in ("components", "pipelines") for path in (REPO / package).rglob("*.py")}
    assert source - packaged == set(), "modules missing from the wheel: list their packages in pyproject.toml"


def test_the_wheel_holds_the_builtin_model_specs_their_schema_and_the_type_table(wheel_files):
    models = REPO / "models"
    data = {f"components/model/builtin_specs/{path.relative_to(models).as_posix()}" for path in models.rglob("*") if path.is_file()}
    assert len(data) == 4 and data - wheel_files == set(), "package data missing: see [tool.setuptools.package-data] in pyproject.toml"

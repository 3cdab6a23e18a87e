"""The accelerator extras of setup.cfg (`pip install -e '.[cuda12]'`, `cuda13`, `tpu`) are jax's own
extras, under the same version bounds as the project's jax; the installed jax declares each of them
and pins its jaxlib to its own version. Read from setup.cfg and jax's metadata: nothing installed."""

import configparser
import importlib.metadata
import pathlib

from packaging.requirements import Requirement
from packaging.version import Version
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
ACCELERATOR_EXTRAS = ("cuda12", "cuda13", "tpu")


def setup_cfg() -> configparser.ConfigParser:
  parser = configparser.ConfigParser()
  parser.read(REPO / "setup.cfg")
  return parser


def requirements(text: str) -> list[Requirement]:
  lines = (line.split("#")[0].strip() for line in text.splitlines())
  return [Requirement(line) for line in lines if line]


def install_requires() -> dict[str, Requirement]:
  return {r.name: r for r in requirements(setup_cfg()["options"]["install_requires"])}


def jax_extra(extra: str) -> list[Requirement]:
  """What the installed jax requires for one of its extras."""
  found = []
  for text in importlib.metadata.requires("jax") or []:
    requirement = Requirement(text)
    if requirement.marker and requirement.marker.evaluate({"extra": extra}):
      found.append(requirement)
  return found


@pytest.mark.parametrize("extra", ACCELERATOR_EXTRAS)
def test_accelerator_extra_is_jaxs_own(extra):
  declared = requirements(setup_cfg()["options.extras_require"][extra])
  assert [(r.name, r.extras) for r in declared] == [("jax", {extra})]
  # The same bounds as the project's jax: the extra never moves jax off the version it runs.
  assert declared[0].specifier == install_requires()["jax"].specifier

  jax = importlib.metadata.distribution("jax")
  assert extra in jax.metadata.get_all("Provides-Extra"), f"jax {jax.version} has no [{extra}]"
  assert declared[0].specifier.contains(jax.version)
  pinned = {r.name: r for r in jax_extra(extra)}
  # jax pins its jaxlib (and its CUDA or TPU plugin) to its own release.
  assert "jaxlib" in pinned and pinned["jaxlib"].specifier.contains(jax.version)
  release = Version(jax.version).release
  newer = ".".join(map(str, (*release[:-1], release[-1] + 1)))
  assert not pinned["jaxlib"].specifier.contains(newer)
  plugin = {"cuda12": "jax-cuda12-plugin", "cuda13": "jax-cuda13-plugin", "tpu": "libtpu"}[extra]
  assert plugin in pinned


def test_file_access_dependencies_are_declared():
  """etils.epath is imported by the package itself; gs:// without TensorFlow needs gcsfs."""
  assert "epath" in install_requires()["etils"].extras
  assert [r.name for r in requirements(setup_cfg()["options.extras_require"]["gcs"])] == ["gcsfs"]

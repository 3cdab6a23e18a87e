"""A task of one's own: a module added to tasks/ is imported with `t5x_lite.tasks` and trained on
with one flag; a module that fails to import is one line naming its file. Each case runs the train
command in a copy of the checkout, so the checkout's tasks/ stays as it is."""

import glob
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import conftest
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def checkout(tmp_path) -> pathlib.Path:
  """The package, its tasks/ and gin/ copied: a checkout that commands run from."""
  root = tmp_path / "checkout"
  for name in ("t5x_lite", "tasks", "gin"):
    shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
  return root


def readme_task_module() -> str:
  """The module that docs/data.md's "A task of your own" writes to tasks/my_corpus.py."""
  guide = (REPO / "docs" / "data.md").read_text(encoding="utf-8")
  found = re.search(r"cat > tasks/my_corpus\.py <<'EOF'\n(.*?)\n *EOF\n", guide, re.S)
  assert found, "docs/data.md lost its example task module"
  return textwrap.dedent(found.group(1)) + "\n"


TINY = conftest.TINY_TRAIN_FLAGS


def train(checkout: pathlib.Path, *flags: str) -> subprocess.CompletedProcess:
  """The train command run from `checkout` (its own package first on the path, not this one)."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "t5x_lite.train",
      *TINY,
      f"--gin.MODEL_DIR='{checkout / 'run'}'",
      *flags,
    ],
    cwd=checkout,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_a_module_added_to_tasks_trains_with_one_flag(checkout, tiny_corpus):
  (checkout / "tasks" / "my_corpus.py").write_text(readme_task_module())
  data = checkout / "data" / "my_corpus"  # where the guide's module reads
  data.mkdir(parents=True)
  for split, pattern in (("train", tiny_corpus.train), ("validation", tiny_corpus.validation)):
    for i, path in enumerate(sorted(glob.glob(pattern))):
      shutil.copy(path, data / f"{split}-{i}.txt")
  shutil.copy(tiny_corpus.vocab, data / "vocab.model")

  done = train(checkout, "--gin.MIXTURE_OR_TASK_NAME='my_corpus_span_corruption'")
  assert done.returncode == 0, done.stderr[-3000:]
  assert '"final": {"step": 1' in done.stdout


def test_a_broken_task_module_is_one_line_naming_its_file(checkout):
  broken = checkout / "tasks" / "broken.py"
  broken.write_text("import seqio\n\nTASK = seqio.no_such_thing\n")
  done = train(checkout)
  assert done.returncode == 2, done.stderr[-3000:]
  assert done.stderr.splitlines() == [
    f"error: task module {broken}:3: AttributeError: module 'seqio' has no attribute "
    "'no_such_thing'"
  ]

"""Every command the documentation shows is checked against the code (README.md, docs/*.md,
launch/README.md).

The convention for fenced code blocks:
  ```bash (or sh, shell)   commands to paste into a fresh shell in the checkout after the two
                           set-up commands: `\\` continues a line, `#` starts a comment,
                           `<<'EOF'` ... `EOF` is a here-document (its text is no command)
  ```text, gin, python, …  output, configuration or code: not read
A fence without a language fails the test, so that no block of commands goes unread; so does a
command in an indented (unfenced) code block.

Each command of a bash block is checked, none is run except the cheap ones below:
  .venv/bin/python -m t5x_lite.X  the module exists; every --flag is one that its `--help` lists
                                  (run once per module); gin flags are parsed as `train` parses
                                  them (gin_utils.parse_gin): each --gin_file resolves, each
                                  --gin.NAME / --gin_bindings names a configurable parameter or a
                                  macro of the command's gin files
  .venv/bin/python benchmarks/X   the script exists and its `--help` lists every --flag
  launch/X (also after sbatch)    the script exists and is executable; its flags are train's
  make TARGET                     the Makefile has the target
  anything else                   a tool of OTHER_TOOLS; `python` alone is refused (in a fresh
                                  shell it is not the project's interpreter), and so are `...` and
                                  `[optional]` arguments, which do not paste
Placeholder paths (/data/..., gs://my-bucket/...) are never opened, but the module, flag and gin
names around them are checked. A gin file inside a run directory that a documented command
writes (its --model_dir or MODEL_DIR, e.g. runs/from_hf/model.gin) is not looked up.
Run for real: `model_info`, and `inspect_data` of the quickstart task (on a small stand-in corpus
in the quickstart corpus's layout, through $T5X_LITE_CACHE); every `--help` runs anyway.
In the prose: `--gin.NAME=` bindings, `python -m t5x_lite.X` modules and repository paths name
things that exist, and relative links (with #anchors into README.md and docs/) resolve.
"""

import dataclasses
import functools
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import gin
import pytest

from t5x_lite import gin_utils
from t5x_lite.errors import UserError

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "launch" / "README.md"]
SHELL = {"bash", "sh", "shell"}
OTHER_TOOLS = {"awk", "cat", "mkdir", "sbatch", "scancel", "source"}
PYTHON = ".venv/bin/python"
OPERATORS = {"&&", "||", ";", "|", "&"}
# Files a documented command tells the user to create.
CREATED_BY_THE_DOCS = {"tasks/my_corpus.py"}


@dataclasses.dataclass(frozen=True)
class Command:
  where: str  # file:line of the block
  words: tuple[str, ...]

  def __str__(self) -> str:
    return f"{self.where}: {shlex.join(self.words)}"


def fenced_blocks(path: pathlib.Path):
  """(line, language, lines) of each fenced block, its lines dedented as deep as its fence."""
  blocks, open_block = [], None
  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    indent = len(line) - len(line.lstrip())
    if open_block is None and line.strip().startswith("```"):
      open_block = (number, line.strip()[3:].strip(), [], indent)
    elif open_block is not None and line.strip() == "```":
      blocks.append(open_block[:3])
      open_block = None
    elif open_block is not None:
      open_block[2].append(line[open_block[3] :])
  assert open_block is None, f"{path.name}:{open_block[0]}: a fence is never closed"
  return blocks


def prose(path: pathlib.Path) -> str:
  """The text outside fenced blocks."""
  return re.sub(r"^ *```.*?^ *```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def simple_commands(lines: list[str]) -> list[tuple[int, list[str]]]:
  """(index of its first line, words) of each simple command: continuations joined, comments,
  here-documents and redirections dropped, and `&&`, `||`, `;`, `|` splitting commands."""
  commands, pending, start, heredoc = [], "", None, None
  for index, line in enumerate(lines):
    if heredoc is not None:
      heredoc = None if line.strip() == heredoc else heredoc
      continue
    start = index if start is None else start
    if line.endswith("\\"):
      pending += line[:-1] + " "
      continue
    lexer = shlex.shlex(pending + line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words, tokens = [], list(lexer)
    while tokens:
      token = tokens.pop(0)
      if token in OPERATORS:
        commands.append((start, words))
        words = []
      elif set(token) <= set("<>"):  # a redirection and its target
        target = tokens.pop(0)
        heredoc = target if token == "<<" else heredoc
      else:
        words.append(token)
    commands.append((start, words))
    pending, start = "", None
  return [(start, words) for start, words in commands if words]


def all_commands() -> list[Command]:
  found = []
  for path in DOCS:
    for line, language, lines in fenced_blocks(path):
      if language in SHELL:
        found += [
          Command(f"{path.relative_to(REPO)}:{line + 1 + start}", tuple(words))
          for start, words in simple_commands(lines)
        ]
  return found


COMMANDS = all_commands()


@functools.cache
def run_directories() -> frozenset:
  """Directories the documented commands write runs to (--model_dir, MODEL_DIR)."""
  found = set()
  for command in COMMANDS:
    for word in command.words:
      m = re.match(r"^(?:--model_dir|--gin\.MODEL_DIR|MODEL_DIR)=['\"]?([^'\"]+)", word)
      if m:
        found.add(m.group(1).rstrip("/") + "/")
  return frozenset(found)


def subprocess_env(**extra) -> dict:
  path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
  return {**os.environ, "PYTHONPATH": path, **extra}


@functools.cache
def help_flags(*program: str) -> frozenset:
  """The --flags that `program --help` lists (a module as ("-m", NAME), or a script)."""
  done = subprocess.run(
    [sys.executable, *program, "--help"],
    cwd=REPO,
    env=subprocess_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, f"{' '.join(program)} --help failed: {done.stderr[-2000:]}"
  options = done.stdout.partition("\noptions:\n")[2]  # argparse's list, not the description
  assert options, f"{' '.join(program)} --help lists no options:\n{done.stdout}"
  return frozenset(re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)", options))


@functools.cache
def gin_configurables_imported() -> None:
  """Registers what the commands' gin files may bind (what inspect_data and train import)."""
  from t5x_lite import inspect_data

  inspect_data.import_configurables()


def check_gin(command: Command, args: list[str]) -> None:
  """The gin flags, parsed as the train command parses them (files resolved, names checked)."""
  files, bindings, _ = gin_utils.split_gin_flags(args)
  if not files and not bindings:
    return
  written = [f for f in files if any(f.startswith(d) for d in run_directories())]
  files = [f for f in files if f not in written]
  if written:  # the macros of a file a run writes are unknown here: check parameters only
    bindings = [b for b in bindings if "." in b.split("=")[0]]
  gin_configurables_imported()
  with gin_utils.fresh_config():
    try:
      gin_utils.parse_gin(files, bindings, finalize=False)
    except UserError as e:
      pytest.fail(f"{command}: {e}", pytrace=False)


def check_flags(command: Command, program: tuple[str, ...], args: list[str]) -> None:
  known = help_flags(*program)
  for arg in gin_utils.split_gin_flags(args)[2]:
    if arg.startswith("--"):
      assert arg.split("=")[0] in known, f"{command}: {arg} is not a flag of {program[-1]}"


def check_module_command(command: Command, module: str, args: list[str]) -> None:
  if module == "pytest":
    return
  assert module.startswith("t5x_lite."), f"{command}: runs module {module}"
  file = REPO / module.replace(".", "/")
  assert file.with_suffix(".py").is_file(), f"{command}: no module {module}"
  check_flags(command, ("-m", module), args)
  check_gin(command, args)


def check_launcher(command: Command, words: list[str]) -> None:
  at = next(i for i, w in enumerate(words) if w.startswith("launch/"))
  script = REPO / words[at]
  assert script.is_file() and os.access(script, os.X_OK), f"{command}: no script {words[at]}"
  args = words[at + 1 :]
  if script.name == "local.sh":
    assert args and args[0].isdigit(), f"{command}: local.sh takes NUM_PROCESSES first"
    args = args[1:]
  check_module_command(command, "t5x_lite.train", args)


def check(command: Command) -> None:
  words = list(command.words)
  while words and re.match(r"^[A-Za-z_]\w*=", words[0]):  # VAR=value before the command
    words.pop(0)
  for word in words:
    assert word != "..." and not word.startswith("["), f"{command}: {word!r} does not paste"
  tool, args = words[0], words[1:]
  assert tool not in ("python", "python3"), f"{command}: in a fresh shell that is not {PYTHON}"
  if tool == PYTHON:
    if args[0] == "-m":
      check_module_command(command, args[1], args[2:])
    else:
      assert (REPO / args[0]).is_file(), f"{command}: no script {args[0]}"
      check_flags(command, (args[0],), args[1:])
  elif tool.startswith(".venv/bin/"):
    assert tool in (".venv/bin/pip", ".venv/bin/ruff"), f"{command}: {tool}"
  elif tool == "make":
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))
    for target in (a for a in args if "=" not in a):
      assert target in targets, f"{command}: the Makefile has no target {target}"
  elif tool.startswith("launch/") or (
    tool == "sbatch" and any(a.startswith("launch/") for a in args)
  ):
    check_launcher(command, words)
  else:
    assert tool in OTHER_TOOLS, f"{command}: {tool!r} is neither the project's nor a known tool"


@pytest.fixture(scope="module")
def quickstart_cache(tmp_path_factory, tiny_corpus) -> pathlib.Path:
  """$T5X_LITE_CACHE with a small corpus in the quickstart corpus's layout (the real one takes
  half a minute to build)."""
  from t5x_lite.data import testing

  cache = tmp_path_factory.mktemp("t5x_lite_cache")
  corpus = cache / "quickstart"
  docs = testing.make_documents(60, seed=5, max_words=80)
  testing.write_jsonl_shards(corpus, "train", docs[:50], num_shards=4)
  testing.write_jsonl_shards(corpus, "validation", docs[50:], num_shards=1)
  shutil.copy(tiny_corpus.vocab, corpus / "vocab.model")
  (corpus / "COMPLETE").write_text("{}\n")
  return cache


def runs_for_real(command: Command) -> bool:
  """`--help`, `model_info` (not --measure) and `inspect_data` of the quickstart task."""
  words = command.words
  if words[0] != PYTHON or words[1] != "-m" or not words[2].startswith("t5x_lite."):
    return False
  if words[-1] == "--help":
    return True
  if words[2] == "t5x_lite.model_info":
    return "--measure" not in words
  quickstart = "--gin_file=runs/quickstart.gin" in words
  return (
    words[2] == "t5x_lite.inspect_data" and quickstart and not any("--gin." in w for w in words)
  )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.where)
def test_documented_command(command, request):
  check(command)
  if not runs_for_real(command):
    return
  cache = request.getfixturevalue("quickstart_cache")
  done = subprocess.run(
    [sys.executable, *command.words[1:]],
    cwd=REPO,
    env=subprocess_env(T5X_LITE_CACHE=str(cache)),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
  if command.words[-1] == "--help":
    assert done.stdout.startswith("usage:"), done.stdout[:2000]
    return
  assert json_objects(done.stdout), f"{command} printed no JSON:\n{done.stdout[-2000:]}"


def json_objects(text: str) -> list:
  """The JSON objects printed one after another (one per line, or one over several lines)."""
  decoder, found, text = json.JSONDecoder(), [], text.strip()
  while text:
    value, end = decoder.raw_decode(text)
    found.append(value)
    text = text[end:].strip()
  return found


def test_the_docs_have_the_commands_users_come_for():
  modules = {c.words[2] for c in COMMANDS if c.words[:2] == (PYTHON, "-m")}
  assert {"t5x_lite.train", "t5x_lite.export_hf", "t5x_lite.preflight"} <= modules
  readme = [c for c in COMMANDS if c.where.startswith("README.md")]
  assert ("make", "quickstart") in [c.words for c in readme]
  assert ("make", "test") in [c.words for c in readme]  # what CI runs


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_code_block_says_what_it_holds(path):
  for line, language, _ in fenced_blocks(path):
    assert language, f"{path.name}:{line}: a fence without a language (bash, text, gin, python)"
  indented = re.findall(r"^ {4,}(?:\.venv/|python |make |launch/).*", prose(path), re.M)
  assert not indented, f"{path.name}: commands outside a fenced block: {indented}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_prose_names_what_exists(path):
  text = prose(path)
  for name in re.findall(r"--gin\.([A-Za-z_][\w./]*)=", text):
    assert is_gin_name(name), f"{path.name}: --gin.{name} names no configurable nor macro"
  for module in re.findall(r"python -m (t5x_lite(?:\.[a-z_]\w*)+)", text):
    assert (REPO / module.replace(".", "/")).with_suffix(".py").is_file(), f"{path.name}: {module}"
  pattern = r"(?<![\w/])((?:t5x_lite|tasks|tests|benchmarks|launch|gin)/[\w/.-]*\w)"
  for name in set(re.findall(pattern, text)) - CREATED_BY_THE_DOCS:
    if "." in name.rsplit("/", 1)[-1] or name.endswith("/"):
      assert (REPO / name).exists(), f"{path.name}: {name} does not exist"
  for name in re.findall(r"`((?:models|runs)/\w+\.gin)`", text):
    assert (REPO / "gin" / name).is_file(), f"{path.name}: no gin file {name}"


def is_gin_name(name: str) -> bool:
  macros = {
    m
    for p in (REPO / "gin").rglob("*.gin")
    for m in re.findall(r"^([A-Z]\w*) =", p.read_text(), re.M)
  }
  if name in macros:
    return True
  gin_configurables_imported()
  with gin_utils.fresh_config():
    try:
      gin.parse_config([f"{name} = None"], skip_unknown=False)
    except (ValueError, KeyError):
      return False
  return True


def heading_anchors(path: pathlib.Path) -> set[str]:
  """GitHub's anchors for the headings of a Markdown file."""
  headings = re.findall(r"^#+ (.*)$", prose(path), re.M)
  return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve(path):
  for target in re.findall(r"\]\(([^)\s]+)\)", prose(path)):
    if re.match(r"^[a-z]+://", target):
      continue
    file, _, anchor = target.partition("#")
    linked = (path.parent / file).resolve() if file else path
    assert linked.exists(), f"{path.name}: link to {target}: no such file"
    # BENCHMARKS.md's headings are its authors' to change; only the guides' anchors are checked.
    if anchor and linked.suffix == ".md" and linked.name != "BENCHMARKS.md":
      assert anchor in heading_anchors(linked), f"{path.name}: no heading for {target}"

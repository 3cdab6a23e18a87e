"""Real orbax checkpoints: restore on other meshes, corrupt latest steps, a save killed mid-flight."""

import os

# 8 CPU devices (conftest sets the same); must happen before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import dataclasses  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from t5x_lite import checkpoints, hf_files, partitioning  # noqa: E402
from t5x_lite.config import resolve_model_name  # noqa: E402
from t5x_lite.errors import UserError  # noqa: E402
from t5x_lite.models import EncoderDecoderModel  # noqa: E402
from t5x_lite.trainer import Trainer  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
CFG = dataclasses.replace(resolve_model_name("t5-efficient-tiny-dm64-ff128-nl2"), vocab_size=256)
LENGTHS = {"inputs": 16, "targets": 8}
# A failed (corrupt) orbax read leaves an asyncio callback behind that reports a closed loop.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def make_trainer(num_partitions: int, devices=None) -> Trainer:
  mesh = partitioning.make_mesh(num_partitions, devices)
  return Trainer(EncoderDecoderModel(CFG), mesh, partitioning.logical_axis_rules(), LENGTHS)


def meta(step: int) -> dict:
  return {
    "step": step,
    "model_config": dataclasses.asdict(CFG),
    "gin_config": "",
    "mixture_or_task_name": "unused",
    "task_feature_lengths": LENGTHS,
    "batches_consumed": step,
  }


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """Steps 1 and 2 (different values) saved from an 8x1 mesh; returns (model_dir, states)."""
  model_dir = tmp_path_factory.mktemp("run")
  trainer = make_trainer(1)
  assert dict(trainer.mesh.shape) == {"data": 8, "model": 1}
  states = {1: trainer.init_state(1), 2: trainer.init_state(2)}
  ckpt = checkpoints.Checkpointer(str(model_dir))
  for step, state in states.items():
    ckpt.save(step, state, meta(step), None)
  ckpt.close()
  return model_dir, {s: jax.device_get(st) for s, st in states.items()}


def assert_same_values(restored, expected):
  leaves = jax.tree.leaves(
    jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), b)), restored, expected)
  )
  assert leaves and all(leaves)


def copy_run(model_dir, dst) -> pathlib.Path:
  shutil.copytree(model_dir, dst)
  return pathlib.Path(dst)


def corrupt_state(model_dir: pathlib.Path, step: int) -> None:
  """Truncates every array data file of a step's state, as an interrupted copy would."""
  files = [
    p
    for p in (model_dir / "checkpoints" / str(step) / "state").rglob("*")
    if p.is_file() and "d" in p.parent.name
  ]
  assert files
  for p in files:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])


@pytest.mark.parametrize("num_partitions", [4, 1])
def test_restore_on_another_mesh(saved, num_partitions):
  model_dir, states = saved
  trainer = make_trainer(num_partitions)
  assert dict(trainer.mesh.shape) == {"data": 8 // num_partitions, "model": num_partitions}
  ckpt = checkpoints.Checkpointer(str(model_dir))
  step, state, got_meta = ckpt.restore(trainer.abstract_state())
  ckpt.close()
  assert step == 2 and got_meta == meta(2)
  assert_same_values(state, states[2])
  shardings = jax.tree.leaves(
    jax.tree.map(lambda a, s: a.sharding == s, state, trainer.state_shardings)
  )
  assert all(shardings)
  if num_partitions == 4:  # the vocabulary really is split over `model` now
    embedding = state.params["token_embedder"]["embedding"]
    assert len(embedding.addressable_shards) == 8 and embedding.addressable_shards[
      0
    ].data.shape == (64, 64)


def test_restore_on_one_device(saved):
  model_dir, states = saved
  device = jax.devices()[3]
  trainer = make_trainer(1, devices=[device])
  ckpt = checkpoints.Checkpointer(str(model_dir))
  step, state, _ = ckpt.restore(trainer.abstract_state(), step=1)
  ckpt.close()
  assert step == 1 and state.params["encoder"]["encoder_norm"]["scale"].devices() == {device}
  assert_same_values(state, states[1])
  # The params-only restore used by export and inference: no optimizer, no gin, one device.
  restored = hf_files.restore_params(str(model_dir), device=device)
  assert restored.step == 2 and restored.cfg == CFG
  assert_same_values(restored.params, states[2].params)
  assert {d for leaf in jax.tree.leaves(restored.params) for d in leaf.devices()} == {device}


def test_corrupt_latest_falls_back(saved, tmp_path, capsys):
  model_dir = copy_run(saved[0], tmp_path / "run")
  corrupt_state(model_dir, 2)
  trainer = make_trainer(2)
  ckpt = checkpoints.Checkpointer(str(model_dir))
  step, state, _ = ckpt.restore(trainer.abstract_state())
  ckpt.close()
  assert step == 1
  assert_same_values(state, saved[1][1])
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 1
  # One readable line: the step, the file and what is wrong with it, where it went, what is used.
  assert lines[0].startswith(
    f"warning: checkpoint {model_dir}/checkpoints/2 cannot be read (state: Error reading "
  )
  assert re.search(r"is not valid for value of size \d+\); moved it to ", lines[0]), lines[0]
  assert re.search(r"/unreadable\.2\.\d+, falling back to step 1$", lines[0]), lines[0]
  assert "TensorStore" not in lines[0] and "tensorstore_spec" not in lines[0]
  # The unreadable step is kept aside (never deleted), so training can write step 2 again.
  assert [p.name.split(".")[:2] for p in (model_dir / "checkpoints").glob("unreadable.*")] == [
    ["unreadable", "2"]
  ]
  assert checkpoints.Checkpointer(str(model_dir)).all_steps() == [1]


def test_params_restore_skips_corrupt_latest(saved, tmp_path, capsys):
  model_dir = copy_run(saved[0], tmp_path / "run")
  corrupt_state(model_dir, 2)
  restored = hf_files.restore_params(str(model_dir))
  assert restored.step == 1
  assert (
    f"checkpoint {model_dir / 'checkpoints' / '2'} cannot be restored" in capsys.readouterr().out
  )


def test_export_says_in_one_line_which_step_it_skips(saved, tmp_path):
  model_dir = copy_run(saved[0], tmp_path / "run")
  corrupt_state(model_dir, 2)
  (model_dir / "checkpoints" / "2" / "state" / "manifest.ocdbt").unlink()
  done = subprocess.run(
    [sys.executable, "-m", "t5x_lite.export_hf", f"--model_dir={model_dir}"]
    + [f"--output_dir={tmp_path / 'hf'}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  warning = f"warning: checkpoint {model_dir}/checkpoints/2 cannot be restored (state: "
  assert done.stdout.startswith(warning) and "falling back to step 1\n" in done.stdout
  assert "exported step 1 of" in done.stdout
  # No library dump in it, and none of the tracebacks Orbax's failed reads leave behind.
  assert "TensorStore" not in done.stdout and "tensorstore_spec" not in done.stdout
  assert "Traceback" not in done.stderr, done.stderr[-3000:]


def test_only_corrupt_checkpoint_is_a_user_error(saved, tmp_path):
  model_dir = copy_run(saved[0], tmp_path / "run")
  shutil.rmtree(model_dir / "checkpoints" / "1")
  corrupt_state(model_dir, 2)
  trainer = make_trainer(1)
  ckpt = checkpoints.Checkpointer(str(model_dir))
  with pytest.raises(UserError, match=r"checkpoints/2 cannot be read .*nothing else was moved"):
    ckpt.restore(trainer.abstract_state())
  ckpt.close()
  with pytest.raises(UserError, match=r"checkpoints/2 cannot be restored"):
    hf_files.restore_params(str(model_dir))
  with pytest.raises(UserError, match="no checkpoints in"):
    hf_files.restore_params(str(tmp_path / "elsewhere"))


def listing(model_dir: pathlib.Path) -> dict[str, int]:
  return {
    str(p.relative_to(model_dir)): p.stat().st_size for p in model_dir.rglob("*") if p.is_file()
  }


def test_at_most_one_unreadable_step_is_moved_per_start(saved, tmp_path, capsys):
  model_dir = copy_run(saved[0], tmp_path / "run")
  corrupt_state(model_dir, 1)
  corrupt_state(model_dir, 2)
  trainer = make_trainer(1)
  ckpt = checkpoints.Checkpointer(str(model_dir))
  with pytest.raises(
    UserError,
    match=r"checkpoints/1 cannot be read .*unreadable\.2\.\d+ was moved "
    r"aside on this start; nothing else was moved",
  ):
    ckpt.restore(trainer.abstract_state())
  ckpt.close()
  assert "checkpoints/2 cannot be read" in capsys.readouterr().out
  assert sorted(p.name.split(".")[0] for p in (model_dir / "checkpoints").iterdir()) == [
    "1",
    "unreadable",
  ]


def test_other_shapes_are_refused_and_nothing_moves(saved, tmp_path):
  """A run that builds another state (here a model of other dimensions) must not take the
  checkpoints for corrupt: an error, every file as it was."""
  model_dir = copy_run(saved[0], tmp_path / "run")
  before = listing(model_dir)
  other = dataclasses.replace(CFG, d_ff=256)
  trainer = Trainer(
    EncoderDecoderModel(other),
    partitioning.make_mesh(1),
    partitioning.logical_axis_rules(),
    LENGTHS,
  )
  ckpt = checkpoints.Checkpointer(str(model_dir))
  with pytest.raises(
    UserError,
    match=r"checkpoints/2 holds a state of another shape than this run "
    r"builds \(.*mlp.*: checkpoint \(.*128.*\), this run \(.*256.*\)\)",
  ):
    ckpt.restore(trainer.abstract_state())

  # A refusal from the settings check comes before any array is read, with the same guarantee.
  def refuse(step, meta):
    raise UserError(f"refused step {step} ({meta['step']})")

  with pytest.raises(UserError, match=r"refused step 2 \(2\)"):
    ckpt.restore(make_trainer(1).abstract_state(), check_meta=refuse)
  ckpt.close()
  assert listing(model_dir) == before


KILL_MID_SAVE = textwrap.dedent("""
    import os, signal, sys
    import jax.numpy as jnp
    from t5x_lite import checkpoints
    ckpt = checkpoints.Checkpointer(sys.argv[1])
    # Big enough that the background write is still running when the process dies.
    ckpt.save(3, {"big": jnp.ones((96, 1024, 1024), jnp.float32)}, {"step": 3}, None)
    print("saving", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_sigkill_during_save_leaves_no_complete_step(saved, tmp_path):
  model_dir = copy_run(saved[0], tmp_path / "run")
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  done = subprocess.run(
    [sys.executable, "-c", KILL_MID_SAVE, str(model_dir)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == -9 and "saving" in done.stdout, done.stderr
  leftovers = [p for p in os.listdir(model_dir / "checkpoints") if p not in ("1", "2")]
  assert leftovers and all("tmp" in p for p in leftovers), leftovers  # killed mid-write
  trainer = make_trainer(1)
  ckpt = checkpoints.Checkpointer(str(model_dir))
  assert ckpt.all_steps() == [1, 2]
  step, state, _ = ckpt.restore(trainer.abstract_state())
  ckpt.close()
  assert step == 2
  assert_same_values(state, saved[1][2])
  assert hf_files.restore_params(str(model_dir)).step == 2

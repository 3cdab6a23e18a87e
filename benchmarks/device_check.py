"""The whole path on one accelerator, as a user runs it: the train command without TensorFlow.

  python benchmarks/device_check.py prepare --dir=DIR     # on a CPU host with TF: the inputs
  python benchmarks/device_check.py run --dir=DIR [--out=FILE.json]   # on the accelerator host

`prepare` writes a C4-format corpus, trains nothing, and writes ready-made examples of it for
t5-efficient-tiny (`python -m t5x_lite.write_examples`, ~10 MB) plus DIR/manifest.json (the
shapes; `plan --target=h100`'s memory predictions where the CUDA compiler is installed here).
`run` needs only what DIR holds and the package (no TF, seqio or TFDS) and prints a table:
  throughput  the train command on synthetic data, bfloat16, batch 128, inputs 512 / targets 114,
              memory_fit='auto', ~30 steps of t5-efficient-tiny, -tiny-nl32 and -base: the last
              window's step time, tokens/s, MFU (exact FLOPs, the device's dense bf16 peak), the
              device's peak memory next to plan's prediction
  resume      t5-efficient-tiny on the ready-made examples for 200 steps (the loss falls),
              SIGKILL after the step-100 checkpoint, the same command again: its losses against an
              uninterrupted run's (XLA's deterministic GPU ops, so that equal means equal)
  export      export_hf of that run; transformers loads it and its greedy tokens equal infer's
and writes everything as one JSON (--out). `--small` does the same at CPU shapes (a test runs it:
tests/test_device_check.py); `--refuse_tf` runs every command where those imports fail.
"""

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

MODELS = ("t5-efficient-tiny", "t5-efficient-tiny-nl32", "t5-efficient-base")
FULL = {"batch": 128, "inputs": 512, "targets": 114, "steps": 30, "log": 10}
# The ready-made part: tiny at the recipe's lengths, a batch that keeps the files near 10 MB.
FULL_RESUME = {"batch": 32, "inputs": 512, "targets": 114, "steps": 200, "period": 100}
SMALL = {"batch": 8, "inputs": 32, "targets": 8, "steps": 6, "log": 2}
SMALL_RESUME = {"batch": 8, "inputs": 32, "targets": 8, "steps": 12, "period": 6}
# A tiny stand-in for the three models at CPU shapes (the test suite's model).
SMALL_MODEL = [
  "--gin.model_config.name='t5-efficient-tiny-dm64-ff128-nh2-kv32-nl2'",
  "--gin.model_config.vocab_size=4224",
  "--gin.train.num_microbatches=1",
]
PROMPTS = ("The history of the <extra_id_0> is long.", "Python is a programming language")


def _python(module: str, args: list[str], refuse_tf: bool) -> list[str]:
  if refuse_tf:
    from t5x_lite.data import testing

    return testing.without_tf_command(sys.executable, module, *args)
  return [sys.executable, "-m", module, *args]


def _run(cmd: list[str], timeout: float = 600, env=None) -> str:
  done = subprocess.run(
    cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env or os.environ
  )
  if done.returncode != 0:
    raise RuntimeError(
      f"{' '.join(c for c in cmd if chr(10) not in c)[:300]} failed:\n"
      f"{done.stdout[-1500:]}{done.stderr[-3000:]}"
    )
  return done.stdout


def _rows(model_dir: pathlib.Path) -> list[dict]:
  lines = (model_dir / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if "loss" in r]


def _model_flags(name: str, small: bool) -> list[str]:
  return SMALL_MODEL if small else [f"--gin_file=models/{name.replace('-', '_')}.gin"]


def _train_flags(model_dir, shapes: dict, steps: int) -> list[str]:
  return [
    "--gin_file=runs/pretrain.gin",
    f"--gin.MODEL_DIR='{model_dir}'",
    f"--gin.BATCH_SIZE={shapes['batch']}",
    f"--gin.TASK_FEATURE_LENGTHS={{'inputs': {shapes['inputs']}, 'targets': {shapes['targets']}}}",
    f"--gin.TRAIN_STEPS={steps}",
    "--gin.train.memory_fit='auto'",
  ]


# -- prepare (a CPU host with TensorFlow) ----------------------------------------------------------


def prepare(directory: pathlib.Path, small: bool) -> None:
  from data_startup import write_corpus

  from t5x_lite.data import quickstart_corpus

  shapes = SMALL_RESUME if small else FULL_RESUME
  corpus, examples = directory / "corpus", directory / "examples"
  write_corpus(str(corpus), num_files=2 if small else 4, docs_per_file=100 if small else 600)
  vocab = quickstart_corpus.default_cache_dir() / "vocab.model"
  shutil.copy(vocab, directory / "vocab.model")
  flags = [
    *_model_flags("t5-efficient-tiny", small),
    *_train_flags(directory / "unused", shapes, shapes["steps"]),
    "--gin.MIXTURE_OR_TASK_NAME='c4_json_span_corruption'",
    f"--gin.C4_JSON_DIR='{corpus}'",
    f"--gin.C4_VOCABULARY='{directory / 'vocab.model'}'",
    "--gin.train.eval_steps=2",
  ]
  _run(
    [
      sys.executable,
      "-m",
      "t5x_lite.write_examples",
      *flags,
      f"--output_dir={examples}",
      f"--steps={shapes['steps']}",
      "--workers=2",
    ],
    timeout=1800,
  )
  manifest = {"small": small, "resume": shapes, "plan": {} if small else _plan_predictions()}
  (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))
  size = sum(p.stat().st_size for p in examples.rglob("*") if p.is_file())
  print(f"prepared {directory}: ready-made examples {size / 1e6:.1f} MB", flush=True)


def _plan_predictions() -> dict:
  """`plan --target=h100 --fit` per model (GB per device as memory_fit='auto' picks), where the
  CUDA compiler is installed on this host (make plan-deps-cuda); else empty."""
  out = {}
  for name in MODELS:
    cmd = [
      sys.executable,
      "-m",
      "t5x_lite.plan",
      f"--gin_file=models/{name.replace('-', '_')}.gin",
      "--gin_file=runs/pretrain.gin",
      "--target=h100",
      "--fit",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
      print(f"plan --target=h100 {name}: {done.stderr.strip().splitlines()[-1:]}", flush=True)
      continue
    result = json.loads(done.stdout.strip().splitlines()[-1])
    out[name] = {
      "total_bytes": result["per_device_bytes"]["total"],
      "remat_policy": result.get("remat_policy"),
      "num_microbatches": result.get("num_microbatches"),
    }
  return out


# -- run (the accelerator host; no TensorFlow needed) ----------------------------------------------


def _synthetic_run(name: str, work: pathlib.Path, small: bool, refuse_tf: bool, extra: list):
  """The train command on synthetic data; (its last logged row, its first, its console)."""
  shapes = SMALL if small else FULL
  model_dir = work / f"synthetic-{name}"
  shutil.rmtree(model_dir, ignore_errors=True)
  try:
    out = _run(
      _python(
        "t5x_lite.train",
        [
          *_model_flags(name, small),
          *_train_flags(model_dir, shapes, shapes["steps"]),
          "--gin.MIXTURE_OR_TASK_NAME='synthetic'",
          f"--gin.train.log_period={shapes['log']}",
          "--gin.train.eval_steps=0",
          "--gin.EVAL_PERIOD=1000000",
          "--gin.CHECKPOINT_PERIOD=1000000",
          *extra,
        ],
        refuse_tf,
      )
    )
    rows = _rows(model_dir)
    return rows[-1], rows[0], out
  finally:
    shutil.rmtree(model_dir, ignore_errors=True)


def throughput(work: pathlib.Path, small: bool, refuse_tf: bool, plan: dict) -> list[dict]:
  results = []
  for name in MODELS[:1] if small else MODELS:
    started = time.perf_counter()
    result = {"model": name if not small else f"{name} (small stand-in)"}
    try:
      last, first, out = _synthetic_run(name, work, small, refuse_tf, [])
    except RuntimeError as e:
      # A kernel the device refuses must not cost the rest of the check: XLA's attention instead.
      result["error"] = str(e).splitlines()[-1][:300]
      result["attention_impl"] = "xla (after the error)"
      last, first, out = _synthetic_run(
        name, work, small, refuse_tf, ["--gin.model_config.attention_impl='xla'"]
      )
    fit = [line for line in out.splitlines() if line.startswith("memory_fit:")]
    result.update(
      step_time_s=last["step_time_s"],
      tokens_per_s=last["tokens_per_second"],
      mfu=last["mfu"],
      device_peak_bytes=last.get("device_peak_bytes"),
      plan_predicted_bytes=plan.get(name, {}).get("total_bytes"),
      memory_fit=fit[0] if fit else "the configured step fits",
      compile_s=first.get("compile_s"),
      wall_s=round(time.perf_counter() - started, 1),
    )
    results.append(result)
    print(json.dumps(result), flush=True)
  return results


def resume(work: pathlib.Path, data: pathlib.Path, small: bool, refuse_tf: bool, shapes: dict):
  flags = lambda model_dir: _python(  # noqa: E731
    "t5x_lite.train",
    [
      *_model_flags("t5-efficient-tiny", small),
      *_train_flags(model_dir, shapes, shapes["steps"]),
      "--gin.MIXTURE_OR_TASK_NAME='c4_json_span_corruption'",
      f"--gin.ready_made.directory='{data / 'examples'}'",
      f"--gin.CHECKPOINT_PERIOD={shapes['period']}",
      f"--gin.EVAL_PERIOD={shapes['period']}",
      "--gin.train.eval_steps=2",
      "--gin.train.log_period=2",
    ],
    refuse_tf,
  )
  # Equal losses need equal arithmetic: XLA's GPU scatter-adds are otherwise free to reorder.
  env = {
    **os.environ,
    "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip(),
  }
  reference, killed = work / "reference", work / "killed"
  started = time.perf_counter()
  _run(flags(reference), env=env)
  proc = subprocess.Popen(
    flags(killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
  )
  target = killed / "checkpoints" / str(shapes["period"])
  deadline = time.time() + 600
  while not target.is_dir():
    if proc.poll() is not None or time.time() > deadline:
      raise RuntimeError(f"no checkpoint {target}: {proc.stderr.read().decode()[-2000:]}")
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  out = _run(flags(killed), env=env)
  resumed = next((l for l in out.splitlines() if "resuming" in l or "resumed" in l), "")
  ref = {r["step"]: r["loss"] for r in _rows(reference)}
  again = {r["step"]: r["loss"] for r in _rows(killed)}
  common = sorted(set(ref) & set(again))
  return {
    "steps": shapes["steps"],
    "batch": shapes["batch"],
    "first_loss": ref[min(ref)],
    "last_loss": ref[max(ref)],
    "loss_falls": ref[max(ref)] < ref[min(ref)],
    "resumed": resumed,
    "steps_compared": len(common),
    "losses_equal": all(ref[s] == again[s] for s in common),
    "max_abs_loss_difference": max((abs(ref[s] - again[s]) for s in common), default=None),
    "wall_s": round(time.perf_counter() - started, 1),
  }


_HF_GENERATE = """
import json, sys, torch, transformers
directory, prompts, length = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
tok = transformers.AutoTokenizer.from_pretrained(directory)
model = transformers.T5ForConditionalGeneration.from_pretrained(directory).eval()
out = []
for text in prompts:
  ids = tok(text, return_tensors="pt").input_ids
  with torch.no_grad():
    gen = model.generate(ids, max_new_tokens=length, do_sample=False, num_beams=1)
  out.append({"input_ids": ids[0].tolist(), "output_ids": gen[0, 1:].tolist()})
print(json.dumps(out))
"""


def export(work: pathlib.Path, refuse_tf: bool, length: int) -> dict:
  run_dir, hf = work / "reference", work / "hf"
  _run(_python("t5x_lite.export_hf", [f"--model_dir={run_dir}", f"--output_dir={hf}"], refuse_tf))
  args = [f"--model_dir={run_dir}", "--ids", f"--max_decode_length={length}"]
  args += [f"--input={p}" for p in PROMPTS]
  ours = [
    json.loads(l)
    for l in _run(_python("t5x_lite.infer", args, refuse_tf)).splitlines()
    if l.startswith("{")
  ]
  theirs = json.loads(
    _run(
      [sys.executable, "-c", _HF_GENERATE, str(hf), json.dumps(PROMPTS), str(length)]
    ).splitlines()[-1]
  )

  def through_eos(ids):
    return ids[: ids.index(1) + 1] if 1 in ids else ids

  same_inputs = [o["input_ids"] for o in ours] == [t["input_ids"] for t in theirs]
  same_outputs = [through_eos(o["output_ids"]) for o in ours] == [
    through_eos(t["output_ids"]) for t in theirs
  ]
  return {
    "exported": (hf / "model.safetensors").is_file() and (hf / "tokenizer.json").is_file(),
    "same_input_ids": same_inputs,
    "same_greedy_tokens": same_outputs,
    "infer": ours,
    "transformers": theirs,
  }


def _environment() -> dict:
  import jax

  from t5x_lite import flops

  versions = {}
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "torch"):
    try:
      from importlib.metadata import version

      versions[name] = version(name)
    except Exception:  # noqa: BLE001  (absent: not reported)
      pass
  device = jax.devices()[0]
  return {
    "date": time.strftime("%Y-%m-%d"),
    "device": device.device_kind,
    "platform": device.platform,
    "peak_flops_per_device": flops.peak_flops_per_device(),
    "versions": versions,
    "python": sys.version.split()[0],
  }


def _table(report: dict) -> str:
  lines = [
    f"device: {report['environment']['device']} ({report['environment']['platform']})",
    "model                     step ms    tokens/s     MFU  peak GB  plan GB  memory_fit",
  ]
  for r in report["throughput"]:
    gb = lambda b: f"{b / 1e9:7.1f}" if b else "    n/a"  # noqa: E731
    lines.append(
      f"{r['model'][:24]:<24} {r['step_time_s'] * 1000:8.1f} {r['tokens_per_s']:11,.0f} "
      f"{100 * (r['mfu'] or 0):6.1f}% {gb(r['device_peak_bytes'])}  {gb(r['plan_predicted_bytes'])}  "
      f"{r['memory_fit'][:60]}"
    )
    if "error" in r:
      lines.append(f"  (the default attention failed: {r['error'][:120]}; this row is XLA's)")
  r = report["resume"]
  lines.append(
    f"resume: loss {r['first_loss']:.3f} -> {r['last_loss']:.3f} in {r['steps']} steps; "
    f"{r['resumed'] or 'NOT resumed'}; {r['steps_compared']} logged losses "
    f"{'equal' if r['losses_equal'] else 'DIFFER (max ' + str(r['max_abs_loss_difference']) + ')'}"
  )
  e = report["export"]
  lines.append(
    f"export: {'written' if e['exported'] else 'MISSING'}; transformers' greedy tokens "
    f"{'equal' if e['same_greedy_tokens'] else 'DIFFER from'} infer's "
    f"(inputs {'equal' if e['same_input_ids'] else 'differ'})"
  )
  return "\n".join(lines)


def run(directory: pathlib.Path, small: bool, refuse_tf: bool, out: str | None) -> dict:
  manifest = json.loads((directory / "manifest.json").read_text())
  if manifest["small"] != small:
    raise SystemExit(
      f"{directory} was prepared {'with' if manifest['small'] else 'without'} --small"
    )
  work = pathlib.Path(tempfile.mkdtemp(prefix="device_check_"))
  try:
    report = {"environment": _environment()}
    report["throughput"] = throughput(work, small, refuse_tf, manifest.get("plan", {}))
    _save(report, out)
    report["resume"] = resume(work, directory, small, refuse_tf, manifest["resume"])
    _save(report, out)
    report["export"] = export(work, refuse_tf, manifest["resume"]["targets"])
  finally:
    shutil.rmtree(work, ignore_errors=True)
  print(_table(report), flush=True)
  _save(report, out)
  return report


def _save(report: dict, out: str | None) -> None:
  """The report so far (a run cut short by the device's time still leaves its first parts)."""
  if out:
    pathlib.Path(out).write_text(json.dumps(report, indent=1))


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("mode", choices=("prepare", "run"))
  parser.add_argument("--dir", required=True, help="where prepare writes and run reads")
  parser.add_argument("--out", default=None, help="run: the JSON report")
  parser.add_argument("--small", action="store_true", help="CPU shapes")
  parser.add_argument("--refuse_tf", action="store_true", help="run: commands without TF")
  args = parser.parse_args()
  directory = pathlib.Path(args.dir).resolve()
  if args.mode == "prepare":
    directory.mkdir(parents=True, exist_ok=True)
    prepare(directory, args.small)
  else:
    run(directory, args.small, args.refuse_tf, args.out)


if __name__ == "__main__":
  main()

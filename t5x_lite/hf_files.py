"""Shared pieces of export, import and inference: file access (local or gs://), params-only
restore, the HF config, tokenizer and model card files, and all-or-nothing output directories.
"""

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import Any, NamedTuple

from t5x_lite import files, paths, step_fallback
from t5x_lite.config import T5Config
from t5x_lite.errors import UserError, first_line
from t5x_lite.tokens import EOS_ID, EXTRA_IDS, PAD_ID, UNK_ID

# T5Config fields with no counterpart in HF's T5Config: they only say how our code runs.
EXECUTION_ONLY_FIELDS = (
  "name",
  "dtype",
  "scan_layers",
  "scan_unroll",
  "remat_policy",
  "attention_impl",
)


# -- files: local paths or object stores (gs://), through etils.epath, as training does ----------
# (t5x_lite/files.py; the names the export, import and infer commands read files by)

exists = files.exists
isdir = files.isdir
isfile = files.isfile
read_bytes = files.read_bytes
read_text = files.read_text


# -- config ----------------------------------------------------------------------------------------


def config_from_meta(meta: dict, where: str) -> T5Config:
  """The T5Config a checkpoint was trained with (meta['model_config'])."""
  saved = meta.get("model_config")
  if not isinstance(saved, dict):
    raise UserError(f"checkpoint {where} has no model_config in its meta")
  known = {f.name for f in dataclasses.fields(T5Config)}
  unknown = sorted(set(saved) - known)
  if unknown:
    # Written by a newer version with options this one (and maybe HF) cannot run.
    raise UserError(
      f"checkpoint {where} has model options this version does not know: {', '.join(unknown)}"
    )
  return T5Config(**saved)


def hf_incompatibility(cfg: T5Config) -> str | None:
  """Why HF's T5 cannot represent `cfg`, or None.

  Every T5Config field must either map onto an HF config key or only describe execution; a field
  added later without an HF mapping blocks the export unless it still holds its default.
  """
  from t5x_lite.config import EXPANDED_ON_HF_EXPORT, hf_config_dict

  hf_keys = set(hf_config_dict(cfg))
  renamed = {"num_encoder_layers": "num_layers"}
  for f in dataclasses.fields(T5Config):
    if f.name in EXECUTION_ONLY_FIELDS or renamed.get(f.name, f.name) in hf_keys:
      continue
    if f.name in EXPANDED_ON_HF_EXPORT:  # hf_mapping writes these out in HF's untied layout
      continue
      continue
    if f.default is dataclasses.MISSING or getattr(cfg, f.name) != f.default:
      return f"HF's T5 has no equivalent of {f.name}={getattr(cfg, f.name)!r}"
  if cfg.feed_forward_proj not in ("relu", "gated-gelu"):
    return f"HF's T5 has no feed_forward_proj {cfg.feed_forward_proj!r}"
  return None


# -- params-only restore ---------------------------------------------------------------------------


class Restored(NamedTuple):
  step: int
  cfg: T5Config
  params: Any  # jax arrays on one device
  meta: dict


@contextlib.contextmanager
def quiet_absl():
  """Orbax warns about every option a read-only manager ignores; those lines help nobody."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def read_only_manager(directory: str):
  import orbax.checkpoint as ocp

  # The `state` item is written with StandardSave; reading it through the PyTree handler (same
  # on-disk format) allows a partial restore of `params` without the optimizer state.
  options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
  with quiet_absl():
    return ocp.CheckpointManager(
      directory,
      options=options,
      item_handlers={"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
    )


def read_meta(manager, step: int) -> dict:
  """The JSON meta saved beside a checkpoint step's state."""
  import orbax.checkpoint as ocp

  return dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)


def read_params(manager, step: int, abstract, shardings) -> Any:
  """The parameters of one checkpoint step, placed with `shardings` (a tree like `abstract`); the
  optimizer state is not read. Orbax's errors propagate (callers word them)."""
  import jax
  import orbax.checkpoint as ocp

  restore_args = jax.tree.map(
    lambda x, sharding: ocp.ArrayRestoreArgs(
      sharding=sharding, global_shape=x.shape, dtype=x.dtype
    ),
    abstract,
    shardings,
  )
  with quiet_absl():
    state = manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
          item={"params": abstract}, restore_args={"params": restore_args}, partial_restore=True
        )
      ),
    ).state
  return state["params"]


def _drop_closed_loop_reports() -> None:
  """Orbax's failed asynchronous reads leave callbacks behind that report "Event loop is closed"
  through sys.unraisablehook once their loop is gone, a traceback each, sometimes before the
  read has failed: after the line that names the unreadable step they say nothing, so they are
  dropped (other reports still show)."""
  previous = sys.unraisablehook
  if getattr(previous, "_drops_closed_loops", False):
    return

  def hook(report):
    if not (
      isinstance(report.exc_value, RuntimeError) and "Event loop is closed" in str(report.exc_value)
    ):
      previous(report)

  hook._drops_closed_loops = True  # pylint: disable=protected-access
  sys.unraisablehook = hook


def restore_params(model_dir: str, step: int | None = None, device=None) -> Restored:
  """Restores only the params of a checkpoint (the latest complete one, or `step`) onto one device.

  The model comes from the checkpoint's own meta, so no gin is needed. Like training, a latest
  step that cannot be read is reported by name and the previous one is used.
  """
  import jax

  from t5x_lite.models import EncoderDecoderModel

  _drop_closed_loop_reports()
  directory = os.path.join(paths.resolve(model_dir), "checkpoints")
  if not isdir(directory):
    raise UserError(f"no checkpoints in {model_dir} (expected {directory}/<step>/)")
  manager = read_only_manager(paths.orbax_path(directory))
  steps = sorted(manager.all_steps())
  if not steps:
    raise UserError(f"no complete checkpoint in {directory}")
  if step is not None:
    if step not in steps:
      raise UserError(f"no checkpoint for step {step} in {directory}; available: {steps}")
    steps = [step]
  device = device or jax.local_devices()[0]
  sharding = jax.sharding.SingleDeviceSharding(device)

  def attempt(candidate: int) -> Restored:
    where = os.path.join(directory, str(candidate))
    with step_fallback.reading("meta"), quiet_absl():
      meta = read_meta(manager, candidate)
    cfg = config_from_meta(meta, where)
    abstract = EncoderDecoderModel(cfg).abstract_params()
    with step_fallback.reading("state"):
      params = read_params(manager, candidate, abstract, jax.tree.map(lambda x: sharding, abstract))
    return Restored(candidate, cfg, params, meta)

  def unreadable(candidate: int, error: BaseException) -> None:
    """Read-only: a step that cannot be read is named and skipped, never moved."""
    where = os.path.join(directory, str(candidate))
    reason = step_fallback.reason(error)
    if step is not None or candidate == steps[0]:
      raise UserError(f"checkpoint {where} cannot be restored: {reason}") from None
    previous = max(s for s in steps if s < candidate)
    print(
      f"warning: checkpoint {where} cannot be restored ({reason}); falling back to step {previous}",
      flush=True,
    )

  return step_fallback.newest_readable(steps, attempt, unreadable)


# -- tokenizer files -------------------------------------------------------------------------------


def extra_id_tokens(n: int = EXTRA_IDS) -> list[str]:
  return [f"<extra_id_{i}>" for i in range(n)]


def check_sentencepiece(model_bytes: bytes, source: str) -> int:
  """Validates a T5 SentencePiece model (pad 0, eos 1, unk 2, no extra ids); returns its size."""
  import sentencepiece as spm

  if not model_bytes:
    raise UserError(f"{source} is empty, not a SentencePiece model")
  try:
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
  except Exception:
    # The library's own words are a C++ assertion ("ParseFromArray(...)").
    raise UserError(f"{source} is not a SentencePiece model (it does not parse as one)") from None
  ids = (sp.pad_id(), sp.eos_id(), sp.unk_id())
  if ids != (PAD_ID, EOS_ID, UNK_ID):
    raise UserError(f"{source} has pad/eos/unk ids {ids}; T5 needs {(PAD_ID, EOS_ID, UNK_ID)}")
  if sp.piece_to_id("<extra_id_0>") != sp.unk_id():
    raise UserError(f"{source} already contains <extra_id_*> pieces; give the model without them")
  return sp.get_piece_size()


def _strip_extra_ids(model_bytes: bytes) -> bytes:
  """seqio's in-memory model has the extra ids appended as pieces: drop them again."""
  from sentencepiece import sentencepiece_model_pb2

  proto = sentencepiece_model_pb2.ModelProto.FromString(model_bytes)
  while proto.pieces and proto.pieces[-1].piece.startswith("<extra_id_"):
    proto.pieces.pop()
  return proto.SerializeToString()


def sentencepiece_bytes_of(vocab) -> bytes:
  """The plain SentencePiece model behind a seqio SentencePieceVocabulary."""
  path = getattr(vocab, "sentencepiece_model_file", None)
  if isinstance(path, str) and path:
    return read_bytes(path)
  data = getattr(vocab, "sentencepiece_model", None) or getattr(vocab, "sp_model", None)
  if not data:
    raise UserError(f"vocabulary {type(vocab).__name__} has no SentencePiece model")
  return _strip_extra_ids(data)


def run_sentencepiece(
  model_dir: str, vocab: str | None, meta: dict
) -> tuple[bytes | None, str, str]:
  """The SentencePiece model of a run, as (bytes or None, where from, why not): the file `vocab`
  (--vocab), else MODEL_DIR/spiece.model (what import_hf copies in), else the run's task's."""
  if vocab:
    if isdir(vocab):
      raise UserError(f"--vocab {vocab} is a directory; give the SentencePiece model file in it")
    if not isfile(vocab):
      raise UserError(f"--vocab file {vocab} does not exist")
    return read_bytes(vocab), vocab, ""
  beside = os.path.join(model_dir, "spiece.model")
  if isfile(beside):
    return read_bytes(beside), beside, ""
  data, why = task_sentencepiece(meta)
  return data, f"task {meta.get('mixture_or_task_name')!r}", why


def task_sentencepiece(meta: dict) -> tuple[bytes | None, str]:
  """(model bytes, '') from the run's task vocabulary, or (None, why not)."""
  task = meta.get("mixture_or_task_name")
  if not task:
    return None, "the checkpoint names no task"
  try:
    import gin

    from t5x_lite import gin_utils
    from t5x_lite.data import pipeline
    import t5x_lite.tasks  # noqa: F401  (registers the seqio tasks)

    # Vocabulary paths can be gin bindings of the run: apply the run's saved config.
    with gin_utils.fresh_config():
      gin.parse_config(gin_utils.upgrade_old_names(meta.get("gin_config") or ""), skip_unknown=True)
      return sentencepiece_bytes_of(pipeline.get_vocabulary(task)), ""
  except Exception as e:
    return None, f"the vocabulary of task {task!r} is not available ({first_line(e)})"


def fast_tokenizer(model_bytes: bytes):
  """A `tokenizers.Tokenizer` that encodes text exactly as seqio's SentencePieceVocabulary with
  100 extra ids does, so transformers can load it without converting the SentencePiece model
  (which needs protobuf).

  SentencePiece's normalization (the precompiled NFKC map, extra-whitespace removal, the dummy
  "▁" prefix, spaces as "▁") runs as one normalizer over the whole text, and the Unigram model
  gets the pieces and scores. The extra ids are added tokens matched on the normalized text, like
  seqio's "▁<extra_id_N>" pieces: "<extra_id_0>" preceded by a space (or at the start) is the
  sentinel, glued to a word it is not. HF's order: <extra_id_0> is the last id (pieces + 99).
  """
  from sentencepiece import sentencepiece_model_pb2
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors

  proto = sentencepiece_model_pb2.ModelProto.FromString(model_bytes)
  spec = proto.normalizer_spec
  unk = [i for i, p in enumerate(proto.pieces) if p.type == p.UNKNOWN]
  tokenizer = Tokenizer(
    models.Unigram(
      [(p.piece, p.score) for p in proto.pieces],
      unk_id=unk[0] if unk else None,
      byte_fallback=proto.trainer_spec.byte_fallback,
    )
  )
  steps = []
  if spec.precompiled_charsmap:
    steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
  if spec.remove_extra_whitespaces:
    steps += [normalizers.Replace(Regex(r"^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
  if spec.add_dummy_prefix:
    steps.append(normalizers.Prepend("▁"))
  if spec.escape_whitespaces:
    steps.append(normalizers.Replace(" ", "▁"))
  tokenizer.normalizer = normalizers.Sequence(steps)
  tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
  # Already in the vocabulary (ids 0, 1, 2); as special tokens, decoding can skip them.
  tokenizer.add_special_tokens(
    [AddedToken(t, normalized=False, special=True) for t in ("<pad>", "</s>", "<unk>")]
  )
  tokenizer.add_special_tokens(
    [AddedToken(t, normalized=True, special=True) for t in reversed(extra_id_tokens())]
  )
  eos = proto.trainer_spec.eos_id
  tokenizer.post_processor = processors.TemplateProcessing(
    single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
  )
  return tokenizer


class SentencePieceText:
  """Text <-> ids as seqio's SentencePieceVocabulary with 100 extra ids does, without seqio (or
  TensorFlow): the same SentencePiece model with the extra ids appended as user-defined pieces
  ("<extra_id_99>" ... "<extra_id_0>", so "<extra_id_0>" is the last id), decoded up to EOS."""

  def __init__(self, model_bytes: bytes):
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto.FromString(model_bytes)
    for i in reversed(range(EXTRA_IDS)):
      proto.pieces.add(
        piece=f"\u2581<extra_id_{i}>",
        score=0.0,
        type=sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED,
      )
    self._processor = sentencepiece.SentencePieceProcessor(model_proto=proto.SerializeToString())
    self.vocab_size = self._processor.get_piece_size()

  def encode(self, text: str) -> list[int]:
    return self._processor.encode_as_ids(text)

  def decode(self, ids) -> str:
    ids = list(ids)
    if EOS_ID in ids:
      ids = ids[: ids.index(EOS_ID)]
    unk = self._processor.unk_id()
    return self._processor.decode_ids([i if 0 <= i < self.vocab_size else unk for i in ids])


def write_tokenizer_files(out_dir: str, model_bytes: bytes, model_max_length: int = 512) -> None:
  """spiece.model, tokenizer.json and the configs with which `AutoTokenizer` loads them.

  With tokenizer.json, transformers needs neither protobuf nor sentencepiece to load the
  tokenizer; spiece.model is kept for T5Tokenizer and for import_hf.
  """
  with open(os.path.join(out_dir, "spiece.model"), "wb") as f:
    f.write(model_bytes)
  fast_tokenizer(model_bytes).save(os.path.join(out_dir, "tokenizer.json"))
  # PreTrainedTokenizerFast takes tokenizer.json as it is. Under "T5Tokenizer", transformers
  # re-adds the sentinels as tokens matched anywhere in the raw text ("a<extra_id_0>b" too),
  # which is not how seqio, and so the model in training, saw them.
  specials = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
  write_json(os.path.join(out_dir, "special_tokens_map.json"), specials)
  write_json(
    os.path.join(out_dir, "tokenizer_config.json"),
    {
      "tokenizer_class": "PreTrainedTokenizerFast",
      "extra_ids": EXTRA_IDS,
      "model_max_length": model_max_length,
      "clean_up_tokenization_spaces": False,
      **specials,
    },
  )


def write_json(path: str, value: dict) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, sort_keys=True)
    f.write("\n")


# -- all-or-nothing output directories -------------------------------------------------------------


def check_output_dir(out_dir: str, overwrite: bool, flag: str = "--overwrite") -> None:
  if exists(out_dir) and not isdir(out_dir):
    raise UserError(f"{out_dir} exists and is not a directory")
  paths.check_creatable(out_dir, "output directory")
  if isdir(out_dir) and files.listdir(out_dir) and not overwrite:
    hint = f" (pass {flag} to replace it)" if flag else ""
    raise UserError(f"output directory {out_dir} exists and is not empty{hint}")


def _publish(tmp: str) -> None:
  """Files rw-r--r--, directories rwxr-xr-x: an export is meant to be shared (mkdtemp and some
  writers create private ones)."""
  os.chmod(tmp, 0o755)
  for root, dirs, names in os.walk(tmp):
    for d in dirs:
      os.chmod(os.path.join(root, d), 0o755)
    for name in names:
      os.chmod(os.path.join(root, name), 0o644)


def _upload(tmp: str, out_dir: str) -> None:
  """Copies a local tree to an object store; the previous contents, if any, go first."""
  if files.isdir(out_dir):
    files.rmtree(out_dir)
  for root, _, names in os.walk(tmp):
    rel = os.path.relpath(root, tmp)
    target = out_dir if rel == "." else os.path.join(out_dir, rel)
    files.makedirs(target)
    for name in sorted(names):
      files.copy(os.path.join(root, name), os.path.join(target, name))


@contextlib.contextmanager
def staged_output_dir(out_dir: str, overwrite: bool = False, flag: str | None = "--overwrite"):
  """Yields a local temporary directory that becomes `out_dir` only if the body succeeds.

  Locally it is a sibling renamed into place: a crash leaves at most a `.<name>.tmp-*`
  directory, never a half-written `out_dir`. For an object store (gs://), where directories
  cannot be renamed, the finished tree is uploaded once the body succeeded.
  """
  out_dir = paths.resolve(out_dir)
  check_output_dir(out_dir, overwrite, flag)
  if paths.is_remote(out_dir):
    tmp = tempfile.mkdtemp(prefix="t5x_lite_export-")
    try:
      yield tmp
      _publish(tmp)
      _upload(tmp, out_dir)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
    return
  parent = os.path.dirname(out_dir)
  try:
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
  except OSError as e:  # a read-only file system, a name too long, ...
    raise UserError(
      f"output directory {out_dir} cannot be created: {e.strerror}; choose another output directory"
    ) from None
  try:
    yield tmp
    _publish(tmp)
    if os.path.isdir(out_dir):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
      os.replace(out_dir, os.path.join(old, "x"))
      os.replace(tmp, out_dir)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise

"""Model configuration: the T5Config dataclass, the model-name grammar, and derived numbers.

Every gin file binds exactly one function, `model_config`, which turns a released model name
(`t5-efficient-base-el16-dl8`, `t5-v1_1-small`, ...) plus optional overrides into a `T5Config`.
"""

import dataclasses
import re

import gin

from t5x_lite import tokens
from t5x_lite.errors import UserError

FEED_FORWARD_PROJS = ("relu", "gated-gelu")
DTYPES = ("float32", "bfloat16")
# Rematerialisation policies, applied per layer (see network.remat_policy):
#   none                nothing is recomputed (fastest, most memory)
#   full                everything is recomputed in the backward pass (least memory)
#   minimal             matmul outputs without batch dimensions are saved (T5X's 'minimal');
#                       attention (batched matmuls, or a fused kernel) is recomputed
#   save_dots           every matmul output is saved, and a fused attention kernel's outputs;
#                       elementwise ops are recomputed
#   save_attention_out  only each layer's attention and mlp outputs are saved
#   lean                bfloat16 query/key/value, attention context and output, MLP pre-activation
#                       are saved; the xla kernel's attention scores are recomputed (the recipe's
#                       default: a scanned stack then needs no more memory than an unscanned one).
#                       A fused kernel keeps no scores: its outputs are saved, nothing is redone
REMAT_POLICIES = ("none", "full", "minimal", "save_dots", "save_attention_out", "lean")
# Which kernel computes attention (see attention.py): T5's XLA core, cuDNN's fused attention
# (GPU, bfloat16), or 'auto', cuDNN where it applies and XLA elsewhere.
ATTENTION_IMPLS = ("auto", "xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Dimensions and execution options of a T5 encoder-decoder.

  `dtype` is the activation dtype; parameters are always float32.
  """

  name: str
  d_model: int
  d_ff: int
  num_heads: int
  d_kv: int
  num_encoder_layers: int
  num_decoder_layers: int
  feed_forward_proj: str
  tie_word_embeddings: bool
  vocab_size: int = 32128
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dropout_rate: float = 0.0
  dtype: str = "float32"
  scan_layers: bool = True
  # Layers per scan iteration (nn.scan's `unroll`): 1 compiles one layer whatever the depth; a
  # stack's depth unrolls it fully, for faster steps at an unscanned model's compile time.
  scan_unroll: int = 1
  remat_policy: str = "none"
  # T5-Efficient `-sh`: multi-query attention, one key head and one value head for all query heads.
  shared_heads: bool = False
  # T5-Efficient `-skv`: one projection gives both keys and values (the value is the key).
  tied_key_value: bool = False
  # An execution option: every value computes the same function (see attention.py).
  attention_impl: str = "auto"

  def __post_init__(self):
    for field in (
      "vocab_size",
      "d_model",
      "d_ff",
      "num_heads",
      "d_kv",
      "num_encoder_layers",
      "num_decoder_layers",
      "relative_attention_num_buckets",
      "relative_attention_max_distance",
      "scan_unroll",
    ):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"model {self.name!r}: {field} must be a positive integer, got {value!r}")
    if self.feed_forward_proj not in FEED_FORWARD_PROJS:
      raise UserError(
        f"model {self.name!r}: feed_forward_proj must be one of "
        f"{', '.join(FEED_FORWARD_PROJS)}, got {self.feed_forward_proj!r}"
      )
    if self.dtype not in DTYPES:
      raise UserError(
        f"model {self.name!r}: dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}"
      )
    if self.remat_policy not in REMAT_POLICIES:
      raise UserError(
        f"model {self.name!r}: remat_policy must be one of {', '.join(REMAT_POLICIES)}, "
        f"got {self.remat_policy!r}"
      )
    if self.attention_impl not in ATTENTION_IMPLS:
      raise UserError(
        f"model {self.name!r}: attention_impl must be one of {', '.join(ATTENTION_IMPLS)}, "
        f"got {self.attention_impl!r}"
      )
    if not 0.0 <= self.dropout_rate < 1.0:
      raise UserError(
        f"model {self.name!r}: dropout_rate must be in [0, 1), got {self.dropout_rate!r}"
      )
    if not self.layer_norm_epsilon > 0:
      raise UserError(
        f"model {self.name!r}: layer_norm_epsilon must be positive, got {self.layer_norm_epsilon!r}"
      )
    if self.relative_attention_num_buckets < 4:
      # The bucket function splits the buckets in halves (direction) and halves again (exact/log).
      raise UserError(f"model {self.name!r}: relative_attention_num_buckets must be at least 4")
    for field in ("shared_heads", "tied_key_value"):
      if not isinstance(getattr(self, field), bool):
        raise UserError(
          f"model {self.name!r}: {field} must be True or False, got {getattr(self, field)!r}"
        )

  @property
  def inner_dim(self) -> int:
    """Width of the joined attention heads (num_heads * d_kv)."""
    return self.num_heads * self.d_kv

  @property
  def num_kv_heads(self) -> int:
    """Key/value heads: 1 with shared heads (multi-query attention), else one per query head."""
    return 1 if self.shared_heads else self.num_heads

  @property
  def kv_inner_dim(self) -> int:
    """Width of the joined key (or value) heads (num_kv_heads * d_kv)."""
    return self.num_kv_heads * self.d_kv


# (d_model, d_ff, num_heads, num_layers, d_kv) of the released HF configs.
EFFICIENT_SIZES = {
  "tiny": (256, 1024, 4, 4, 64),
  "mini": (384, 1536, 8, 4, 64),
  "small": (512, 2048, 8, 6, 64),
  "base": (768, 3072, 12, 12, 64),
  "large": (1024, 4096, 16, 24, 64),
  "xl": (1024, 16384, 32, 24, 128),
  "xxl": (1024, 65536, 128, 24, 128),
}
V1_1_SIZES = {
  "small": (512, 1024, 6, 8, 64),
  "base": (768, 2048, 12, 12, 64),
  "large": (1024, 2816, 16, 24, 64),
  "xl": (2048, 5120, 32, 24, 64),
  "xxl": (4096, 10240, 64, 24, 64),
}
FAMILIES = {"t5-efficient": EFFICIENT_SIZES, "t5-v1_1": V1_1_SIZES}
# Suffix -> the field(s) it sets. Note: HF's released `t5-efficient-base-ff2000` ships d_ff=2048;
# the grammar gives what the name says (2000).
SUFFIXES = {
  "nl": ("num_encoder_layers", "num_decoder_layers"),
  "el": ("num_encoder_layers",),
  "dl": ("num_decoder_layers",),
  "ff": ("d_ff",),
  "dm": ("d_model",),
  "kv": ("d_kv",),
  "nh": ("num_heads",),
}
# Suffixes without a number, each switching one field on: `sh` "attention heads are shared" (read
# as multi-query attention: one key head and one value head serve all query heads), `skv`
# "key-value projection matrices are tied" (one projection gives both keys and values).
FLAGS = {
  "sh": "shared_heads",
  "skv": "tied_key_value",
}
# The fields a T5-Efficient name can set that HF's T5 spells out in full on export (the shared
# head repeated per head, the tied matrix written as both k and v).
EXPANDED_ON_HF_EXPORT = tuple(FLAGS.values())
GRAMMAR = (
  "t5-efficient-{"
  + "|".join(EFFICIENT_SIZES)
  + "} or t5-v1_1-{"
  + "|".join(V1_1_SIZES)
  + "}, optionally followed by suffixes -{"
  + "|".join(SUFFIXES)
  + "}N and -"
  + " / -".join(FLAGS)
  + " (e.g. t5-efficient-base-el16-dl8, t5-efficient-tiny-nl32-sh-skv)"
)
_NAME_RE = re.compile(r"^(t5-efficient|t5-v1_1)-([a-z]+)((?:-[a-z0-9]+)*)$")


def resolve_model_name(name: str) -> T5Config:
  """Parses a model name such as `t5-efficient-tiny-nl32` into its T5Config."""
  m = _NAME_RE.match(name.strip().lower()) if isinstance(name, str) else None
  if not m or m.group(2) not in FAMILIES[m.group(1)]:
    raise UserError(f"unknown model name {name!r}; expected {GRAMMAR}")
  family, size, suffixes = m.groups()
  d_model, d_ff, num_heads, num_layers, d_kv = FAMILIES[family][size]
  dims = dict(
    d_model=d_model,
    d_ff=d_ff,
    num_heads=num_heads,
    d_kv=d_kv,
    num_encoder_layers=num_layers,
    num_decoder_layers=num_layers,
  )
  flags = {}
  for suffix in filter(None, suffixes.split("-")):
    if suffix in FLAGS:
      if FLAGS[suffix] in flags:
        raise UserError(
          f"suffix -{suffix} appears twice in model name {name!r}; expected {GRAMMAR}"
        )
      flags[FLAGS[suffix]] = True
      continue
    numbered = re.match(r"^([a-z]+)(\d+)$", suffix)
    if not numbered or numbered.group(1) not in SUFFIXES or int(numbered.group(2)) <= 0:
      raise UserError(f"bad suffix {suffix!r} in model name {name!r}; expected {GRAMMAR}")
    key, value = numbered.groups()
    for field in SUFFIXES[key]:
      dims[field] = int(value)
  v1_0 = family == "t5-efficient"
  return T5Config(
    name=name,
    feed_forward_proj="relu" if v1_0 else "gated-gelu",
    tie_word_embeddings=v1_0,
    **dims,
    **flags,
  )


@gin.configurable
def model_config(
  name: str = gin.REQUIRED,
  vocab_size: int | None = None,
  d_model: int | None = None,
  d_ff: int | None = None,
  num_heads: int | None = None,
  d_kv: int | None = None,
  num_encoder_layers: int | None = None,
  num_decoder_layers: int | None = None,
  feed_forward_proj: str | None = None,
  tie_word_embeddings: bool | None = None,
  shared_heads: bool | None = None,
  tied_key_value: bool | None = None,
  dropout_rate: float = 0.0,
  dtype: str = "float32",
  scan_layers: bool = True,
  scan_unroll: int = 1,
  remat_policy: str = "none",
  attention_impl: str = "auto",
) -> T5Config:
  """The model every gin file configures: a named model, with optional overrides.

  Dimension overrides left as None keep what the name says. Model gins bind only `name` (and
  dimensions); run gins bind dtype, dropout_rate, scan_layers, scan_unroll, remat_policy and
  attention_impl.
  """
  cfg = resolve_model_name(name)
  dims = dict(
    vocab_size=vocab_size,
    d_model=d_model,
    d_ff=d_ff,
    num_heads=num_heads,
    d_kv=d_kv,
    num_encoder_layers=num_encoder_layers,
    num_decoder_layers=num_decoder_layers,
    feed_forward_proj=feed_forward_proj,
    tie_word_embeddings=tie_word_embeddings,
    shared_heads=shared_heads,
    tied_key_value=tied_key_value,
  )
  overrides = {k: v for k, v in dims.items() if v is not None}
  return dataclasses.replace(
    cfg,
    dropout_rate=dropout_rate,
    dtype=dtype,
    scan_layers=scan_layers,
    scan_unroll=scan_unroll,
    remat_policy=remat_policy,
    attention_impl=attention_impl,
    **overrides,
  )


def hf_config_dict(cfg: T5Config) -> dict:
  """The Hugging Face `config.json` contents for this model (what an export writes)."""
  return {
    "architectures": ["T5ForConditionalGeneration"],
    "model_type": "t5",
    "d_model": cfg.d_model,
    "d_ff": cfg.d_ff,
    "d_kv": cfg.d_kv,
    "num_heads": cfg.num_heads,
    "num_layers": cfg.num_encoder_layers,
    "num_decoder_layers": cfg.num_decoder_layers,
    "vocab_size": cfg.vocab_size,
    "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
    "relative_attention_max_distance": cfg.relative_attention_max_distance,
    "dropout_rate": cfg.dropout_rate,
    "layer_norm_epsilon": cfg.layer_norm_epsilon,
    "feed_forward_proj": cfg.feed_forward_proj,
    "tie_word_embeddings": cfg.tie_word_embeddings,
    "is_encoder_decoder": True,
    "use_cache": True,
    "pad_token_id": tokens.PAD_ID,
    "eos_token_id": tokens.EOS_ID,
    "decoder_start_token_id": tokens.PAD_ID,  # T5 starts decoding from the pad id
    "initializer_factor": 1.0,
    "torch_dtype": "float32",
    "dtype": "float32",
  }


def params_by_formula(cfg: T5Config) -> int:
  """The parameter count in closed form (models.num_params counts the initialised tree
  instead).

  With d = d_model, a = num_heads * d_kv, c = num_kv_heads * d_kv, p = 2 key/value projections
  (1 when tied), f = d_ff, g = 2 (gated-gelu) or 1 (relu) input projections, V = vocab_size:
  each attention 2*d*a + p*d*c, each mlp (g + 1)*d*f, each layer norm d; per stack one relative
  position table (buckets x heads) and a final norm; the embedding V*d, plus an lm_head V*d when untied.
  """
  d, f, v = cfg.d_model, cfg.d_ff, cfg.vocab_size
  attention = 2 * d * cfg.inner_dim + (1 if cfg.tied_key_value else 2) * d * cfg.kv_inner_dim
  mlp = (3 if cfg.feed_forward_proj == "gated-gelu" else 2) * d * f
  encoder_layer = attention + mlp + 2 * d
  decoder_layer = 2 * attention + mlp + 3 * d
  per_stack = cfg.relative_attention_num_buckets * cfg.num_heads + d
  embeddings = v * d * (1 if cfg.tie_word_embeddings else 2)
  return (
    cfg.num_encoder_layers * encoder_layer
    + cfg.num_decoder_layers * decoder_layer
    + 2 * per_stack
    + embeddings
  )


def forward_flops_per_example(cfg: T5Config, input_length: int, target_length: int) -> float:
  """Forward-pass matmul FLOPs for one (input, target) example.

  A matmul [m, k] x [k, n] counts 2*m*n*k. With d = d_model, a = num_heads * d_kv,
  c = num_kv_heads * d_kv (= a, or d_kv with shared heads), p = 2 key/value projections (1 when
  tied), f = d_ff, e = input_length, t = target_length, V = vocab_size and m = 2 (relu) or 3
  (gated-gelu):
    encoder layer:  2*e*d*2a (q,o) + 2*e*d*p*c (k,v) + 4*e*e*a (scores, values) + 2*e*d*f*m (mlp)
    decoder layer:  2*t*d*2a + 2*t*d*p*c + 4*t*t*a (self-attention)
                  + 2*t*d*2a (q,o) + 2*e*d*p*c (k,v) + 4*t*e*a (cross-attention)
                  + 2*t*d*f*m (mlp)
    logits:         2*t*d*V
  Causal attention is counted in full (the masked half is still computed). Norms, softmax,
  embedding lookups and the relative position bias are left out.
  """
  d, a, f, v = cfg.d_model, cfg.inner_dim, cfg.d_ff, cfg.vocab_size
  kv = (1 if cfg.tied_key_value else 2) * cfg.kv_inner_dim
  e, t = input_length, target_length
  m = 3 if cfg.feed_forward_proj == "gated-gelu" else 2
  encoder_layer = 2 * e * d * (2 * a + kv) + 4 * e * e * a + 2 * e * d * f * m
  decoder_layer = (
    2 * t * d * (2 * a + kv)
    + 4 * t * t * a
    + 2 * t * d * 2 * a
    + 2 * e * d * kv
    + 4 * t * e * a
    + 2 * t * d * f * m
  )
  return float(
    cfg.num_encoder_layers * encoder_layer + cfg.num_decoder_layers * decoder_layer + 2 * t * d * v
  )


def train_flops_per_example(cfg: T5Config, input_length: int, target_length: int) -> float:
  """Training matmul FLOPs for one example: 3 x forward (forward + backward)."""
  return 3.0 * forward_flops_per_example(cfg, input_length, target_length)


FLOPS_FORMULA = (
  "3 x forward matmul FLOPs (2mnk, attention and logits included) / (input + target tokens)"
)


def flops_per_token(cfg: T5Config, input_length: int = 512, target_length: int = 114) -> float:
  """Training FLOPs per token, where tokens are input plus target tokens of an example."""
  return train_flops_per_example(cfg, input_length, target_length) / (input_length + target_length)


def inference_flops_per_token(
  cfg: T5Config, input_length: int = 512, target_length: int = 114
) -> float:
  """Inference (forward-pass) FLOPs per input + target token: a third of the training FLOPs."""
  return forward_flops_per_example(cfg, input_length, target_length) / (
    input_length + target_length
  )


def kv_cache_bytes_per_token(cfg: T5Config, bytes_per_value: int) -> int:
  """Decoder self-attention cache added per decoded token of one sequence, at `bytes_per_value`.

  Every decoder layer keeps num_kv_heads * d_kv numbers for the key and as many for the value; with
  tied key/value (-skv) the value is the key and is kept once. Shared heads (-sh) keep one head
  instead of num_heads: num_heads times less. (Cross-attention keys and values come from the
  encoder output and do not grow with the decoded length.)
  """
  tensors = 1 if cfg.tied_key_value else 2
  return cfg.num_decoder_layers * tensors * cfg.kv_inner_dim * bytes_per_value

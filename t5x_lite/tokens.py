"""T5's fixed token ids and sentinel count, and the one check that a vocabulary fits a model."""

from t5x_lite.errors import UserError

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
# Sentinels <extra_id_0> ... <extra_id_99> appended after the SentencePiece pieces, as in T5.
EXTRA_IDS = 100


def check_vocab_fits(num_ids: int, model_vocab_size: int, what: str) -> None:
  """A vocabulary with more ids than the model's embedding has rows cannot be trained or decoded."""
  if num_ids > model_vocab_size:
    raise UserError(
      f"{what} has {num_ids} ids, more than the model's vocab_size "
      f"{model_vocab_size}; use a model with a larger vocab_size or a smaller "
      f"vocabulary"
    )

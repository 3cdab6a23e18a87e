"""The exported fast tokenizer: tokenizer.json encodes exactly as seqio's SentencePiece vocabulary
(sentinels included), and transformers loads it with neither protobuf nor sentencepiece."""

import json
import pathlib
import subprocess
import sys

import pytest
import seqio
from tokenizers import Tokenizer

from t5x_lite import hf_files, tokens, train_vocab
from t5x_lite.data import testing

SAMPLES = [
  "The <extra_id_0> walks in <extra_id_1> park",
  "<extra_id_99> at the start and at the end <extra_id_2>",
  "glued<extra_id_3>to words, x <extra_id_4>y",
  "  leading, trailing   and  repeated   spaces  ",
  "tabs\tand\nnewlines",
  "ﬁne Ｆｕｌｌ-width ½ café naïve",  # NFKC changes these
  "unknown ☃ and 😀 characters",
  "numbers 12345 and 3.14159",
  "",
]


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory):
  """A T5-style vocabulary (pad 0, eos 1, unk 2, nmt_nfkc) as train_vocab writes them."""
  root = tmp_path_factory.mktemp("vocab")
  docs = testing.make_documents(300, seed=5, max_words=60)
  docs += ["Numbers 1 2 3 4 5 and punctuation: (a, b); c. full stop! question?"] * 20
  pattern = testing.write_text_shards(root / "corpus", "c", docs, 1)
  return train_vocab.train_vocab(pattern, str(root / "spm"), vocab_size=80)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, vocab_path):
  out = tmp_path_factory.mktemp("hf")
  hf_files.write_tokenizer_files(str(out), pathlib.Path(vocab_path).read_bytes(), 64)
  return out


def seqio_ids(vocab_path):
  vocab = seqio.SentencePieceVocabulary(vocab_path, extra_ids=tokens.EXTRA_IDS)
  return [list(vocab.encode(text)) for text in SAMPLES], vocab


def test_tokenizer_json_encodes_like_seqio(export_dir, vocab_path):
  expected, vocab = seqio_ids(vocab_path)
  tokenizer = Tokenizer.from_file(str(export_dir / "tokenizer.json"))
  got = [tokenizer.encode(text, add_special_tokens=False).ids for text in SAMPLES]
  assert got == expected
  # The samples do exercise the sentinels: HF's order, <extra_id_0> on top.
  assert vocab.vocab_size - 1 in expected[0] and vocab.vocab_size - 100 in expected[1]
  assert tokenizer.encode("a").ids[-1] == 1  # EOS appended, as T5 inputs end
  # Decoding gives the text back where every character is in the vocabulary (an unknown one
  # decodes to "<unk>" here and to " ⁇ " in SentencePiece).
  text = "the model <extra_id_0> reads a <extra_id_1> text"
  ids = tokenizer.encode(text, add_special_tokens=False).ids
  assert tokenizer.decode(ids, skip_special_tokens=False) == vocab.decode(ids) == text


BLOCKED_LOAD = """
import json, sys
sys.modules["google.protobuf"] = None   # as if neither were installed
sys.modules["sentencepiece"] = None
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
samples = json.loads(sys.argv[2])
print(json.dumps({"ids": [tok(t).input_ids for t in samples],
                  "extra_id_0": tok.convert_tokens_to_ids("<extra_id_0>"),
                  "decoded": tok.decode(tok(samples[-1]).input_ids, skip_special_tokens=True),
                  "protobuf_loaded": any(m.startswith("google.protobuf.") for m in sys.modules)}))
"""


def test_transformers_loads_it_without_protobuf(export_dir, vocab_path):
  pytest.importorskip("transformers")
  expected, vocab = seqio_ids(vocab_path)
  samples = SAMPLES + ["the model <extra_id_0> reads a text"]
  expected.append(list(vocab.encode(samples[-1])))
  done = subprocess.run(
    [sys.executable, "-c", BLOCKED_LOAD, str(export_dir), json.dumps(samples)],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result["ids"] == [ids + [1] for ids in expected]
  assert result["extra_id_0"] == vocab.vocab_size - 1
  # EOS is dropped; sentinels stay, as in seqio's decode of a span-corruption target.
  assert result["decoded"] == samples[-1]
  assert not result["protobuf_loaded"]


def test_tokenizer_configs(export_dir):
  config = json.loads((export_dir / "tokenizer_config.json").read_text())
  specials = json.loads((export_dir / "special_tokens_map.json").read_text())
  assert config["extra_ids"] == 100 and config["model_max_length"] == 64
  assert specials == {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def test_sentencepiece_text_encodes_and_decodes_as_seqio(vocab_path):
  # infer's vocabulary, which needs neither seqio nor TensorFlow.
  expected, vocab = seqio_ids(vocab_path)
  text = hf_files.SentencePieceText(pathlib.Path(vocab_path).read_bytes())
  assert text.vocab_size == vocab.vocab_size
  assert [text.encode(s) for s in SAMPLES] == expected
  for ids in [*expected, [5, 6, tokens.EOS_ID, 7], [vocab.vocab_size - 1, 9, 10]]:
    assert text.decode(ids) == vocab.decode(ids)

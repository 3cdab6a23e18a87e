"""What a pretrained checkpoint restores: one masked word of held-out text, decoded greedily.

  python benchmarks/span_fill_probe.py --model_dir=runs/quickstart [--step=N] [--examples=300]

Reads the quickstart corpus's validation documents (held out from pretraining), masks one whole
word (every 20th word boundary that has 20 pieces of context on each side) with <extra_id_0>,
the way span corruption drops a span, and decodes the checkpoint greedily (infer's code). Prints
the fraction of spans restored exactly, by the word's length in pieces, and the predictions the
model gives most often. A model that has not learned to use the context predicts the same frequent
token for every span; `eval_accuracy` can then still read about 0.3, the share of sentinels and EOS
in the targets.
"""

import argparse
import collections
import glob
import json
import os

from t5x_lite.data import quickstart_corpus
from t5x_lite.errors import run_main
from t5x_lite.infer import Decoder, load_vocabulary
from t5x_lite.tokens import EOS_ID, EXTRA_IDS

CONTEXT = 20  # pieces kept on each side of the masked word
EVERY = 20  # mask one word boundary in this many


def first_sentinel(vocab) -> int:
  """The id of <extra_id_0>: the last id, the sentinels counting down from it."""
  return vocab.vocab_size - 1


def masked_words(vocab, texts: list[str], limit: int) -> list[tuple[list[int], list[int]]]:
  """(input ids with one word replaced by <extra_id_0>, that word's ids), in document order."""
  sentinel = first_sentinel(vocab)
  out, boundary = [], 0
  for text in texts:
    ids = list(vocab.encode(text))
    starts = [i for i, t in enumerate(ids) if vocab.tokenizer.id_to_piece(t).startswith("▁")]
    for a, b in zip(starts, starts[1:]):
      boundary += 1
      if boundary % EVERY or a < CONTEXT or b + CONTEXT > len(ids):
        continue
      if not vocab.decode(ids[a:b]).strip().isalpha():
        continue
      out.append((ids[a - CONTEXT : a] + [sentinel] + ids[b : b + CONTEXT], ids[a:b]))
      if len(out) == limit:
        return out
  return out


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--step", type=int, default=None)
  parser.add_argument("--examples", type=int, default=300)
  args = parser.parse_args()
  decoder = Decoder(os.path.abspath(args.model_dir), args.step)
  vocab = load_vocabulary(os.path.abspath(args.model_dir), None, decoder.meta)
  patterns, _ = quickstart_corpus.ensure_quickstart_assets(None)
  texts = []
  for path in sorted(glob.glob(patterns["validation"])):
    with open(path, encoding="utf-8") as f:
      texts += [json.loads(line)["text"] for line in f]
  examples = masked_words(vocab, texts, args.examples)
  outputs = decoder.generate([x + [EOS_ID] for x, _ in examples], 8)
  sentinel = first_sentinel(vocab)
  right, total, said = collections.Counter(), collections.Counter(), collections.Counter()
  for (_, word), output in zip(examples, outputs):
    # The first span of the output: the tokens between <extra_id_0> and the next sentinel/EOS.
    span = []
    for t in output[1:] if output[:1] == [sentinel] else []:
      if t == EOS_ID or t > sentinel - EXTRA_IDS:
        break
      span.append(t)
    size = min(len(word), 3)
    total[size] += 1
    right[size] += span == word
    said[vocab.decode(span)] += 1
  print(f"checkpoint step {decoder.step}, {len(examples)} masked words of the validation documents")
  for size in sorted(total):
    label = f"{size}{'+' if size == 3 else ''} piece{'s' if size > 1 else ''}"
    print(
      f"  {label:<9} {right[size]:>4}/{total[size]:<4} restored ({right[size] / total[size]:.3f})"
    )
  print(
    f"  all       {sum(right.values()):>4}/{len(examples):<4} restored ({sum(right.values()) / len(examples):.3f})"
  )
  print("  most frequent predictions:", ", ".join(f"{w!r} x{n}" for w, n in said.most_common(5)))
  return 0


if __name__ == "__main__":
  run_main(main)

"""Text in and out for the encoder-decoders (attnkit.models.seq2seq): a checkpoint's tokenizer.json through the
``tokenizers`` package, or Marian's SentencePiece files through the optional ``sentencepiece`` package."""
from __future__ import annotations

import json
import os
from typing import List, Optional

__all__ = ["HFTokenizer", "MarianTokenizer", "load_tokenizer"]


class HFTokenizer:
    """tokenizer.json through the ``tokenizers`` package: encode with the special tokens it adds (eos),
    decode skipping special tokens."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer
        self.tok = Tokenizer.from_file(path)

    def encode(self, text: str) -> List[int]:
        return self.tok.encode(text).ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)


class MarianTokenizer:
    """Marian's tokenizer: SentencePiece pieces (source.spm to encode, target.spm to decode) mapped through
    vocab.json, an eos appended. Needs the optional ``sentencepiece`` package."""

    def __init__(self, directory: str, eos_token_id: int, pad_token_id: Optional[int], unk: str = "<unk>"):
        try:
            import sentencepiece as spm
        except ImportError:
            raise ImportError("Marian's tokenizer needs the 'sentencepiece' package: pip install 'attnkit[marian]' "
                              "(or pip install sentencepiece)") from None
        self.source = spm.SentencePieceProcessor(model_file=os.path.join(directory, "source.spm"))
        target = os.path.join(directory, "target.spm")
        self.target = spm.SentencePieceProcessor(model_file=target) if os.path.isfile(target) else self.source
        with open(os.path.join(directory, "vocab.json"), encoding="utf-8") as fh:
            self.vocab = json.load(fh)
        self.pieces = {i: p for p, i in self.vocab.items()}
        self.eos, self.pad, self.unk = eos_token_id, pad_token_id, self.vocab.get(unk, 1)
        self.special = {i for p, i in self.vocab.items() if p in ("<pad>", "</s>", "<unk>")} | {eos_token_id}

    def encode(self, text: str) -> List[int]:
        pieces = self.source.encode(text, out_type=str)
        return [self.vocab.get(p, self.unk) for p in pieces] + [self.eos]

    def decode(self, ids) -> str:
        pieces = [self.pieces[i] for i in ids if i in self.pieces and i not in self.special and i != self.pad]
        return self.target.decode_pieces(pieces)


def load_tokenizer(directory: str, config):
    """The checkpoint's tokenizer (tokenizer.json, else Marian's SentencePiece files), or None without one
    (config: the model's Seq2SeqConfig, for Marian's eos and pad ids)."""
    path = os.path.join(directory, "tokenizer.json")
    if os.path.isfile(path):
        try:
            return HFTokenizer(path)
        except ImportError:
            return None
    if os.path.isfile(os.path.join(directory, "source.spm")) and os.path.isfile(os.path.join(directory, "vocab.json")):
        eos = config.generation.get("eos_token_id", 0)
        eos = eos[0] if isinstance(eos, list) else eos
        return MarianTokenizer(directory, int(eos), config.pad_token_id)
    return None

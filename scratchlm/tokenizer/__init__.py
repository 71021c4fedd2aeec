"""Byte-level BPE: train, encode/decode, file formats, corpus -> token files.

from scratchlm.tokenizer import train_bpe, Tokenizer
vocab, merges = train_bpe("corpus.txt", 10_000, ["<|endoftext|>"])
tok = Tokenizer(vocab, merges, ["<|endoftext|>"])
write_token_file(tok.encode(text), "train.bin", tokenizer=tok)   # ids made in Python -> a token file
"""

from scratchlm.tokenizer.formats import load_tokenizer, save_tokenizer
from scratchlm.tokenizer.pretokenize import GPT2_PATTERN
from scratchlm.tokenizer.token_file import write_token_file
from scratchlm.tokenizer.tokenizer import Tokenizer
from scratchlm.tokenizer.train import train_bpe, train_bpe_from_counts

__all__ = [
    "GPT2_PATTERN",
    "Tokenizer",
    "load_tokenizer",
    "save_tokenizer",
    "train_bpe",
    "train_bpe_from_counts",
    "write_token_file",
]

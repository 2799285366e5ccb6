"""Token sequences for generative (Chameleon-style) training: documents, packing, and their files.

A document is one image-caption pair as token ids, in one of two orders (Chameleon trains both):

    caption first (text -> image generation):  [bos] caption <boi> image codes <eoi> eod
    image first   (captioning):                [bos] <boi> image codes <eoi> caption eod

Documents are packed, in input order, into sequences of exactly ``seq_len`` tokens (next-fit:
a document that does not fit the space left starts the next sequence, which is padded; a document
longer than ``seq_len`` is cut into ``seq_len`` pieces). Every token of every document lands in
exactly one place, and each sequence records where its documents start (cu_seqlens, as
flash-attention's variable-length kernels take them) and which key each came from.

Module imports are numpy only (benchmarks run on bare GPU machines); writers import webdataset
and megatron-core when called.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

_DIGIT_LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class TokenLayout:
    """Where image codes and markers sit in the vocabulary: appended after the text tokenizer's ids.

    ids [text_vocab, text_vocab + codebook) are image codes; then <boi>, <eoi>, <image> (the
    placeholder Chameleon's processor puts where pixels are given instead of codes), then eod and
    pad when the text tokenizer has none of its own.
    """
    text_vocab: int
    codebook: int
    bos: int | None = None          # the text tokenizer's, when it has one
    tokenizer_eod: int | None = None
    tokenizer_pad: int | None = None

    @property
    def image_offset(self) -> int:
        return self.text_vocab

    @property
    def boi(self) -> int:
        return self.text_vocab + self.codebook

    @property
    def eoi(self) -> int:
        return self.boi + 1

    @property
    def image_placeholder(self) -> int:
        return self.boi + 2

    @property
    def eod(self) -> int:
        return self.tokenizer_eod if self.tokenizer_eod is not None else self.boi + 3

    @property
    def pad(self) -> int:
        if self.tokenizer_pad is not None:
            return self.tokenizer_pad
        return self.boi + 3 + (self.tokenizer_eod is None)

    @property
    def vocab_size(self) -> int:
        return max(self.pad, self.eod, self.image_placeholder) + 1

    def image_ids(self, codes: np.ndarray) -> np.ndarray:
        return codes.astype(np.int64).ravel() + self.image_offset

    def vocabulary_map(self) -> dict[str, int]:
        """Chameleon's ``vocabulary_map`` entries for the image ids (``IMGIMG<code as letters A-J>Z``)
        and ``<image>``, so ChameleonConfig(vocabulary_map=...) knows which ids are image tokens."""
        names = {f"IMGIMG{''.join(_DIGIT_LETTERS[int(d)] for d in str(c))}Z": self.image_offset + c
                 for c in range(self.codebook)}
        names.update({"<image>": self.image_placeholder, "<boi>": self.boi, "<eoi>": self.eoi})
        return names

    def to_json(self) -> dict:
        return {"text_vocab": self.text_vocab, "codebook": self.codebook, "image_offset": self.image_offset,
                "bos": self.bos, "boi": self.boi, "eoi": self.eoi, "image_placeholder": self.image_placeholder,
                "eod": self.eod, "pad": self.pad, "vocab_size": self.vocab_size}


def image_first(key: str, ratio: float, seed: int = 0) -> bool:
    """Seeded per-key choice of order: image first with probability ``ratio``, whatever the
    processing order or worker count (a hash of seed and key, not a running random state)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < ratio


def build_document(text_ids, codes: np.ndarray, layout: TokenLayout, image_first_: bool) -> np.ndarray:
    """One sample's token ids (int64) in the chosen order; see the module docstring."""
    image = np.concatenate([[layout.boi], layout.image_ids(codes), [layout.eoi]])
    text = np.asarray(text_ids, dtype=np.int64)
    parts = [image, text] if image_first_ else [text, image]
    head = [np.array([layout.bos])] if layout.bos is not None else []
    return np.concatenate(head + parts + [np.array([layout.eod])]).astype(np.int64)


@dataclass
class Segment:
    """One document (or piece of one) inside a packed sequence."""
    key: str
    start: int          # position in the sequence
    length: int
    offset: int = 0     # position of this piece inside its document (0 unless it was cut)
    image_first: bool = False
    grid: tuple[int, int] | None = None   # the image's code grid (rows, columns), when known


@dataclass
class PackedSequence:
    tokens: np.ndarray                      # int64 [seq_len]
    segments: list[Segment] = field(default_factory=list)

    @property
    def used(self) -> int:
        return sum(s.length for s in self.segments)

    def cu_seqlens(self) -> np.ndarray:
        """Document starts and the end of the last one, int32 (the padding tail is not a document)."""
        return np.array([s.start for s in self.segments] + [self.used], dtype=np.int32)


def pack(docs: Iterable[tuple[str, np.ndarray, bool]], seq_len: int, pad: int) -> Iterator[PackedSequence]:
    """(key, token ids, image_first) in order -> sequences of exactly ``seq_len`` tokens, next-fit.

    Next-fit keeps input order (so outputs do not depend on how documents were batched) and
    needs one sequence of memory; a document longer than ``seq_len`` is cut into pieces.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    parts: list[np.ndarray] = []
    segments: list[Segment] = []
    used = 0

    def flush() -> PackedSequence:
        tokens = np.full(seq_len, pad, dtype=np.int64)
        if parts:
            tokens[:used] = np.concatenate(parts)
        return PackedSequence(tokens, list(segments))

    for key, ids, img_first in docs:
        for offset in range(0, max(len(ids), 1), seq_len):
            piece = ids[offset:offset + seq_len]
            if not len(piece):
                continue
            if used + len(piece) > seq_len:
                yield flush()
                parts.clear()
                segments.clear()
                used = 0
            segments.append(Segment(key, used, len(piece), offset, img_first))
            parts.append(piece)
            used += len(piece)
    if segments:
        yield flush()


def npy_bytes(array: np.ndarray) -> bytes:
    """``np.save`` bytes (deterministic header), as WebDataset's .npy decoder reads them; every
    export's .npy members come from here."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def token_dtype(vocab_size: int):
    """Megatron's rule: uint16 when every id fits below 65,500, else int32."""
    return np.uint16 if vocab_size < 65500 else np.int32


def sample_members(seq: PackedSequence, dtype) -> dict:
    """The WebDataset members of one packed sequence: tokens.npy, cu_seqlens.npy and json."""
    return {
        "tokens.npy": npy_bytes(seq.tokens.astype(dtype)),
        "cu_seqlens.npy": npy_bytes(seq.cu_seqlens()),
        "json": {"documents": [{"key": s.key, "start": s.start, "length": s.length, "offset": s.offset,
                                "order": "image_first" if s.image_first else "caption_first",
                                "grid": list(s.grid) if s.grid is not None else None}
                               for s in seq.segments],
                 "padding": len(seq.tokens) - seq.used},
    }


@contextlib.contextmanager
def _staged_pair(prefix: str):
    """A local temp prefix for megatron-core's builder (it writes local files), published onto
    PREFIX.bin/.idx when the block succeeds: renamed beside it when local, uploaded when remote.
    .bin first, .idx last: a reader that finds the .idx finds its complete .bin."""
    from curate import (
        fs,  # imported here: the benchmark runs this module with numpy + torch alone
    )
    from curate.io import write_bytes

    remote = not fs.is_local(prefix)
    scratch = tempfile.mkdtemp(prefix="curate-megatron-") if remote else None
    tmp = (os.path.join(scratch, "part") if remote else
           os.path.join(os.path.dirname(prefix), f".{os.path.basename(prefix)}.tmp-{os.getpid()}"))
    try:
        yield tmp
        for ext in (".bin", ".idx"):
            if remote:
                with open(tmp + ext, "rb") as f:
                    write_bytes(prefix + ext, f.read())
            else:
                os.replace(tmp + ext, prefix + ext)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        for ext in (".bin", ".idx"):
            if os.path.exists(tmp + ext):
                os.remove(tmp + ext)


def write_indexed(prefix: str, sequences: list[PackedSequence], dtype) -> None:
    """A Megatron indexed dataset (PREFIX.bin/.idx) via megatron-core's IndexedDatasetBuilder.

    Each packed sequence is one Megatron *document*; its items are the documents (or pieces) it
    holds, then one item of padding when it is not full. So ``sequence_lengths`` are the document
    boundaries and ``document_indices`` the packed sequences:
    ``np.concatenate(ds[di[j]:di[j + 1]])`` is sequence j, exactly seq_len tokens.
    """
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    with _staged_pair(prefix) as tmp:
        builder = IndexedDatasetBuilder(tmp + ".bin", dtype=dtype)
        for seq in sequences:
            for s in seq.segments:
                builder.add_item(torch.from_numpy(seq.tokens[s.start:s.start + s.length]))
            if seq.used < len(seq.tokens):
                builder.add_item(torch.from_numpy(seq.tokens[seq.used:]))
            builder.end_document()
        builder.finalize(tmp + ".idx")


def merge_indexed(prefix: str, parts: list[str], dtype) -> None:
    """Concatenate indexed datasets (in the given order) into PREFIX.bin/.idx with add_index."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from curate import fs
    with _staged_pair(prefix) as tmp, tempfile.TemporaryDirectory(prefix="curate-megatron-parts-") as local:
        builder = IndexedDatasetBuilder(tmp + ".bin", dtype=dtype)
        for i, part in enumerate(parts):
            if not fs.is_local(part):  # add_index reads local files: fetch the part first
                for ext in (".bin", ".idx"):
                    with open(os.path.join(local, f"{i}{ext}"), "wb") as f:
                        f.write(fs.read_bytes(part + ext))
                part = os.path.join(local, str(i))
            builder.add_index(part)
        builder.finalize(tmp + ".idx")

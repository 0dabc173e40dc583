"""The search copy's index: which blocks of its folded text hold which three-letter pieces.

A term the copy is searched for can only be found in a block of the text that holds each of
its pieces of three bytes (its trigrams): a rare username or a miss is then looked for in a few
blocks of 2 KB rather than in the whole text (70 MB at a million users, 30-60 ms of CPU a
pass). The index only narrows where to look: `bytes.find` over the blocks it names decides.

Bytes are folded to 40 classes first (letters, digits, '@', '.', the separator, everything
else), so a trigram is a number below 40**3 and a block's set of them a row of a presence
table; a class shared by several bytes can only name a block where there is nothing, never
miss one. Pieces holding the separator are left out: no term holds it.

Built with numpy in steps of BUILD_BLOCKS blocks (each step a few milliseconds in C, with
`pause()` between them: see `core.search_copy.Turns`); held as one array of block numbers in
trigram order (2 bytes per trigram per block: 33 MB at a million users) and where each
trigram's list begins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

#: Bytes of folded text per block (~30 users): smaller blocks narrow a term made of common
#: pieces ("hana.ba") further but hold more (trigram, block) pairs, and past 65,536 blocks
#: (here 128 MB of text, ~1.9 million users) a block number takes 32 bits instead of 16.
#: Measured at a million synthetic users: 2,048 bytes, a 33 MB index and a p99 of 7 ms of CPU
#: over 1,000 terms; 4,096, 26 MB; 1,024, 80 MB (32-bit numbers) and 4 ms.
BLOCK = 2048
#: Blocks per build step (a presence table of CLASSES**3 x BUILD_BLOCKS bytes: 16 MB).
BUILD_BLOCKS = 256
#: At most this many of a term's trigrams (the rarest) narrow its blocks: more cost more
#: than the blocks they would rule out.
MOST_GRAMS = 4
CLASSES = 40
GRAMS = CLASSES**3
#: The byte that ends each field in the text (core.search_copy.SEPARATOR).
SEPARATOR_BYTE = 0x1F
SEPARATOR_CLASS = 0

IntArray = npt.NDArray[np.intp]
#: Block numbers: 16 bits each while the text has at most 65,536 blocks (256 MB), else 32.
BlockArray = npt.NDArray[Any]


def _byte_classes() -> npt.NDArray[np.uint16]:
    classes = np.full(256, CLASSES - 1, dtype=np.uint16)
    classes[SEPARATOR_BYTE] = SEPARATOR_CLASS
    for offset, byte in enumerate(b"abcdefghijklmnopqrstuvwxyz0123456789@."):
        classes[byte] = 1 + offset
    return classes


BYTE_CLASSES = _byte_classes()
_CLASS_OF = [int(value) for value in BYTE_CLASSES]


def _no_pause() -> None:
    return None


def _grams_of(text: bytes, start: int, end: int) -> tuple[IntArray, IntArray]:
    """The trigram number and position of every trigram starting in text[start:end] without
    the separator (a trigram may run past `end`, not past the text)."""
    stop = min(len(text), end + 2)
    classes = BYTE_CLASSES[np.frombuffer(text, dtype=np.uint8, count=stop - start,
                                         offset=start)]
    count = max(0, min(end, len(text) - 2) - start)
    first, second, third = classes[:count], classes[1:count + 1], classes[2:count + 2]
    grams = (first.astype(np.intp) * CLASSES + second) * CLASSES + third
    kept = np.flatnonzero((first != SEPARATOR_CLASS) & (second != SEPARATOR_CLASS)
                          & (third != SEPARATOR_CLASS))
    return grams[kept], kept + start


@dataclass(frozen=True)
class GramIndex:
    """For each trigram, the blocks of the text holding it (in block order)."""

    blocks: BlockArray  # block numbers, trigram-major
    offsets: npt.NDArray[np.int64]  # trigram g's blocks: blocks[offsets[g]:offsets[g + 1]]
    block_count: int
    text_length: int
    block: int  # bytes of text per block

    @classmethod
    def build(cls, text: bytes, pause: Callable[[], None] = _no_pause,
              block: int = 0) -> GramIndex:
        """Two passes over steps of BUILD_BLOCKS blocks: each step's (trigram, block) pairs,
        then every pair put in its trigram's place. `block`: bytes a block (0: BLOCK)."""
        block = block or BLOCK
        block_count = max(1, -(-len(text) // block))
        width = min(BUILD_BLOCKS, block_count)  # blocks a step (a small copy: a small table)
        presence = np.zeros(GRAMS * width, dtype=np.bool_)
        steps: list[npt.NDArray[Any]] = []
        counts = np.zeros(GRAMS, dtype=np.int64)
        for first_block in range(0, block_count, width):
            pause()
            start = first_block * block
            grams, positions = _grams_of(text, start, start + width * block)
            presence[grams * width + (positions - start) // block] = True
            present = np.flatnonzero(presence)  # trigram-major, then block
            presence[present] = False
            steps.append(present.astype(np.uint32))
            counts += np.bincount(present // width, minlength=GRAMS)
        del presence
        offsets = np.zeros(GRAMS + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        kind = np.uint16 if block_count <= 1 << 16 else np.uint32
        blocks: BlockArray = np.empty(int(offsets[-1]), dtype=kind)
        cursor = offsets[:-1].copy()
        for step, pairs in enumerate(steps):
            pause()
            grams = (pairs // width).astype(np.intp)
            step_counts = np.bincount(grams, minlength=GRAMS)
            step_starts = np.concatenate(([0], np.cumsum(step_counts)[:-1]))
            places = cursor[grams] + (np.arange(len(pairs)) - step_starts[grams])
            blocks[places] = pairs % width + step * width
            cursor += step_counts
            steps[step] = pairs[:0]  # let each step's pairs go once placed
        return cls(blocks=blocks, offsets=offsets, block_count=block_count,
                   text_length=len(text), block=block)

    @property
    def nbytes(self) -> int:
        return int(self.blocks.nbytes + self.offsets.nbytes)

    def spans(self, needle: bytes) -> Iterator[tuple[int, int]] | None:
        """Where in the text `needle` may be found, as (start, end) spans in text order, each
        to be searched with `find(needle, start, end)`; None when the index cannot narrow it
        (a needle shorter than a trigram): search everywhere."""
        if len(needle) < 3 or len(needle) > self.block:
            return None
        classes = [_CLASS_OF[byte] for byte in needle]
        grams = {(classes[at] * CLASSES + classes[at + 1]) * CLASSES + classes[at + 2]
                 for at in range(len(needle) - 2)}
        lists = sorted((self.blocks[self.offsets[gram]:self.offsets[gram + 1]]
                        for gram in grams), key=len)
        if not len(lists[0]):
            return iter(())
        return self._spans(self._candidates(lists[:MOST_GRAMS]), len(needle))

    def _candidates(self, lists: list[BlockArray]) -> IntArray:
        """The blocks a match may start in: for each trigram, one holding it or the one just
        before (a match's trigrams may lie in the next block)."""
        allowed: npt.NDArray[np.bool_] | None = None
        for blocks in lists:
            holds = np.zeros(self.block_count + 1, dtype=np.bool_)  # the last: spare for -1
            numbers = blocks.astype(np.intp)
            holds[numbers] = True
            holds[numbers - 1] = True
            allowed = holds if allowed is None else allowed & holds
        assert allowed is not None
        return np.flatnonzero(allowed[:self.block_count])

    def _spans(self, candidates: IntArray, needle_length: int) -> Iterator[tuple[int, int]]:
        """Runs of following blocks joined: each run's text, plus what a match starting in
        its last block may run into."""
        if not len(candidates):
            return
        breaks = np.flatnonzero(np.diff(candidates) != 1)
        run_starts = np.concatenate(([candidates[0]], candidates[breaks + 1])).tolist()
        run_ends = np.concatenate((candidates[breaks], [candidates[-1]])).tolist()
        for first, last in zip(run_starts, run_ends, strict=True):
            yield (first * self.block,
                   min(self.text_length, (last + 1) * self.block + needle_length - 1))

"""Tile geometry, in low-resolution pixels of the (even-padded) input.

Each tile owns a core region of the output and is run on a window: the core plus real image
context on every side that has image there. With more context than the network's receptive
field, the core of the tile output equals the whole-frame output, so cores are simply cropped
and placed; nothing is blended. Image borders need no context: the network's own zero padding
is what the whole-frame run sees there too.
"""

from __future__ import annotations

from dataclasses import dataclass

# The smallest tile (core side) the engine accepts or shrinks to when memory runs out.
MIN_TILE = 32


@dataclass(frozen=True)
class Box:
    """A half-open rectangle [top, bottom) x [left, right)."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def area(self) -> int:
        return self.height * self.width


@dataclass(frozen=True)
class Tile:
    core: Box  # the output region this tile is responsible for
    window: Box  # what the network sees: core plus context, clipped to the image


def context_for(model) -> int:
    """Context each tile needs: the receptive-field radius plus an even margin of 2.

    Seven 3x3 convolutions (head, one per body block, tail, upsample) run at half resolution
    after pixel-unshuffle(2): a radius of 2 * (blocks + 3) low-resolution pixels, 14 for the
    released models, hence 16. It is even, so windows stay even-aligned like their cores.
    """
    return 2 * (model.blocks + 3) + 2


def even_tile(size: int) -> int:
    """Tile sides are even so every core and window origin stays on the unshuffle grid."""
    return size - size % 2


def split(box: Box, size: int) -> list[Box]:
    """Row-major cores of `size` x `size` covering `box`; the last row and column are thinner."""
    return [
        Box(top, left, min(top + size, box.bottom), min(left + size, box.right))
        for top in range(box.top, box.bottom, size)
        for left in range(box.left, box.right, size)
    ]


def window(core: Box, height: int, width: int, context: int) -> Tile:
    """The tile for `core` in a `height` x `width` image, with up to `context` px each side."""
    return Tile(
        core,
        Box(
            max(core.top - context, 0),
            max(core.left - context, 0),
            min(core.bottom + context, height),
            min(core.right + context, width),
        ),
    )

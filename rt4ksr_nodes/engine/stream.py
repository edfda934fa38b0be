"""upscale_frames(): a stream of 8-bit frames in host memory -> 8-bit upscaled frames in host
memory, the video / batch-service path.

On CUDA the three stages of consecutive frames overlap: frame i+1 uploads on one stream and
frame i-1 downloads on another while frame i computes; host buffers are pinned so both copies
are asynchronous DMA. A frame is handed out once its download has finished (one frame of lag).
Elsewhere frames run one after the other and are handed out at once.

The whole loop is a stream for the network's runner (accel.Accelerated.stream): CUDA graphs for
repeated window shapes, and compilation in the background as the compile policy says.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from .device import resolve_device, resolve_dtype
from .inference import Cancel, Tiler, make_tiler, network_input
from .prepare import accelerated


def upscale_frames(
    model: torch.nn.Module,
    frames: Iterable[np.ndarray | torch.Tensor],
    *,
    precision: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    tile_size: int = 0,
    cancel: Cancel | None = None,
) -> Iterator[torch.Tensor]:
    """Yield each H x W x 3 uint8 frame (numpy or CPU tensor) upscaled: sH x sW x 3 uint8 CPU
    tensors (pinned on CUDA), rounded like files.images (round half to even of 255 * clamp(x)).

    Frames may change size; the tile plan is rebuilt when they do. Same network, padding and
    tiling as upscale(), so the result equals upscale() on the frame / 255, quantised.
    cancel: polled before every tile; a truthy answer raises UpscaleCancelled.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(precision, device)
    cuda = device.type == "cuda"
    upload = torch.cuda.Stream(device) if cuda else None
    download = torch.cuda.Stream(device) if cuda else None
    in_flight = 1 if cuda else 0  # frames kept back so that copies overlap compute
    pending: deque[tuple[torch.Tensor, torch.cuda.Event | None]] = deque()
    tiler: Tiler | None = None
    planned = None  # the frame size the tiler was made for
    runner = accelerated(model, device, dtype)
    with runner.stream():
        for frame in frames:
            host = _as_uint8_tensor(frame)
            height, width = host.shape[:2]
            if planned != (height, width):
                # The old size's graphs go first: their pool would count as free memory.
                runner.release()
                tiler = make_tiler(
                    model, (height, width), dtype, device, tile_size=tile_size, cancel=cancel
                )
                planned = (height, width)
            # Made outside inference mode: the consumer gets ordinary tensors it may modify.
            output = torch.empty(
                (tiler.scale * height, tiler.scale * width, 3), dtype=torch.uint8,
                pin_memory=cuda,
            )
            pending.append(_upscale_into(output, host, tiler, dtype, upload, download))
            # Yielded outside inference mode, which would otherwise hold in the consumer's loop.
            if len(pending) > in_flight:
                yield _finished(pending.popleft())
        while pending:
            yield _finished(pending.popleft())


@torch.inference_mode()
def _upscale_into(output: torch.Tensor, host: torch.Tensor, tiler: Tiler, dtype: torch.dtype,
                  upload, download) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Start one frame: upload (on CUDA), tiles, quantisation, download into `output`. Returns
    `output` and, on CUDA, the event its download records."""
    height, width = host.shape[:2]
    if upload is None:
        canvas = tiler.run(_to_network(host, dtype))
        return _quantise(canvas[: tiler.scale * height, : tiler.scale * width], output), None
    device = tiler.device
    host = _pinned_copy(host)
    with torch.cuda.stream(upload):
        staged = host.to(device, non_blocking=True)
    torch.cuda.current_stream(device).wait_stream(upload)
    staged.record_stream(torch.cuda.current_stream(device))
    canvas = tiler.run(_to_network(staged, dtype))[: tiler.scale * height, : tiler.scale * width]
    if canvas.device != device:  # kept in host memory (the GPU was short): already there
        return _quantise(canvas, output), None
    result = _quantise(canvas, torch.empty(output.shape, dtype=torch.uint8, device=device))
    download.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(download):
        output.copy_(result, non_blocking=True)
        result.record_stream(download)
        done = torch.cuda.Event()
        done.record()
    return output, done


def _as_uint8_tensor(frame: np.ndarray | torch.Tensor) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(frame)) if isinstance(frame, np.ndarray) else frame
    if tensor.dtype != torch.uint8 or tensor.dim() != 3 or tensor.shape[-1] != 3:
        raise ValueError(f"frames must be H x W x 3 uint8, got {tuple(tensor.shape)} {tensor.dtype}")
    return tensor


def _pinned_copy(host: torch.Tensor) -> torch.Tensor:
    # Pinned blocks come from torch's caching host allocator, which keeps a block out of reuse
    # until the asynchronous copy that reads it has finished.
    pinned = torch.empty(host.shape, dtype=torch.uint8, pin_memory=True)
    return pinned.copy_(host)


def _to_network(staged: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """H x W x 3 uint8 on the device -> the network's input, exactly as upscale() makes it."""
    pixels = staged.permute(2, 0, 1).unsqueeze(0).to(torch.float32).div_(255)
    return network_input(pixels, staged.device, dtype)


def _quantise(canvas: torch.Tensor, into: torch.Tensor) -> torch.Tensor:
    # The canvas is already clamped to [0, 1]; fp32 so that 255 * x rounds like files.images' rint.
    # Whole numbers in [0, 255]: copying them into uint8 loses nothing.
    return into.copy_((canvas.float() * 255).round_())


def _finished(item: tuple[torch.Tensor, torch.cuda.Event | None]) -> torch.Tensor:
    host, done = item
    if done is not None:
        done.synchronize()
    return host

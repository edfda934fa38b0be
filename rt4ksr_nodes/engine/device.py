"""Choosing the device and the compute dtype, and asking a device how much memory is free."""

from __future__ import annotations

import os
import warnings

import torch

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The names offered to users (CLI choices, node widget, upscale()'s precision).
PRECISION_CHOICES = ("auto", *PRECISIONS)


def resolve_device(device: str | torch.device) -> torch.device:
    """`"auto"` picks CUDA, then MPS, then the CPU; anything else is passed to torch.device."""
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    device = torch.device(device)
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device}: RT4KSR runs on cpu, cuda (cuda:N) or mps")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device} requested but MPS (Apple GPU) is not available")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device} requested but there are {torch.cuda.device_count()} CUDA devices"
            )
        if device.index is None:
            # One cache entry per physical GPU: "cuda" and "cuda:0" are the same device.
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_output_device(output_device: str | torch.device | None, device: torch.device) -> torch.device:
    """Where upscale() puts its result: the CPU by default; a device type without an index that
    is the compute device's type means the compute device itself ("cuda" with device cuda:1 is
    cuda:1), so that "the same device" is recognised (memory accounting, direct writes)."""
    if output_device is None:
        return torch.device("cpu")
    output_device = torch.device(output_device)
    if output_device.type == device.type and output_device.index is None:
        return device
    if output_device.type == "cuda" and output_device.index is None:
        return resolve_device(output_device)  # the current CUDA device, as torch would take it
    return output_device


def resolve_dtype(precision: str | torch.dtype, device: torch.device) -> torch.dtype:
    """`"auto"`: fp16 on CUDA (~61 dB from fp32, measured on the CPU), fp32 elsewhere.

    fp16 on the CPU is honoured, not remapped: torch runs it correctly, only slower than fp32 on
    most CPUs. bf16 is allowed but warned about: its 8-bit mantissa costs ~18 dB against fp16.
    """
    if isinstance(precision, torch.dtype):
        dtype = precision
    elif precision == "auto":
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    elif precision in PRECISIONS:
        dtype = PRECISIONS[precision]
    else:
        raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"unsupported compute dtype {dtype}")
    if dtype == torch.bfloat16:
        warnings.warn(
            "bf16 output is ~40 dB PSNR from fp32, ~18 dB worse than fp16; prefer fp16 or fp32",
            stacklevel=3,
        )
    return dtype


def free_memory(device: torch.device) -> int:
    """Bytes the device can still hand out."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        # Blocks cached by torch's allocator are free for us too.
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "mps":
        return max(
            torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory(), 0
        )
    return available_ram()


def available_ram() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# What cuDNN and cuBLAS say when they cannot get memory for a workspace or a handle: no "out of
# memory" in the text ("unable to find an engine": cuDNN found no algorithm whose workspace it
# could allocate).
CUDA_ALLOCATION_FAILURES = (
    "cudnn_status_alloc_failed",
    "cublas_status_alloc_failed",
    "unable to find an engine",
)


def is_out_of_memory(error: BaseException, device: torch.device) -> bool:
    """Whether `error`, raised while running on `device`, means memory ran out (the Tiler then
    shrinks its tiles)."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    if not isinstance(error, RuntimeError):
        return False
    message = str(error).lower()
    if "out of memory" in message:
        return True
    return device.type == "cuda" and any(text in message for text in CUDA_ALLOCATION_FAILURES)

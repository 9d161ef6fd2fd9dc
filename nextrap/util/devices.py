"""The one place that turns a device name (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``) into a device."""

from __future__ import annotations

import re

import torch

from nextrap.errors import DeviceError

__all__ = ["resolve_device"]

_PATTERN = re.compile(r"^(auto|cpu|mps|cuda)(:\d+)?$")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must exist on this machine."""
    if isinstance(name, torch.device):
        name = str(name)
    name = name.strip().lower()
    m = _PATTERN.match(name)
    if not m or (m.group(2) and m.group(1) in ("auto", "cpu", "mps")):
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    kind = m.group(1)
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r} requested but CUDA is not available here; use --device cpu or auto"
            )
        index = int(m.group(2)[1:]) if m.group(2) else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError("device 'mps' requested but MPS is not available here; use --device cpu or auto")
    return torch.device(name)

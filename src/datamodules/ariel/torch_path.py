"""The per-read part of the calibration chain in torch, on a GPU when there is one.

``data.calibration.torch_device: cuda`` runs the steps that touch every read — ``adc``, ``mask``,
``linearity``, ``dark``, ``cds`` and ``bin``, the chain's usual start — as one fused pass of torch
operations on the device, chunk by chunk, and hands the binned frames (a few hundred per visit)
to the numpy steps that follow (``flat``, ``background``, ``extract``). The arithmetic is the numpy
steps', in float32, so the two paths agree to float32 rounding (a test checks it on the CPU); only
the order of the bin's sums differs. A chain that does not start with those steps is refused when
the datamodule is built, naming the first step that differs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from src.core.errors import ConfigError
from src.datamodules.ariel.detector import sigma_clip_outliers
from src.datamodules.ariel.exposure import Exposure
from src.datamodules.ariel.reader import RawExposure
from src.datamodules.ariel.steps import BinStep, MaskStep, Step

#: The steps the torch path runs, in this order (``mask`` may be left out).
TORCH_STEPS: tuple[str, ...] = ("adc", "mask", "linearity", "dark", "cds", "bin")


def split_steps(steps: Sequence[Step], where: str = "data.calibration.steps") -> tuple[tuple[Step, ...], int]:
    """The leading steps the torch path replaces and how many there are.

    Raises:
        ConfigError: The chain does not start with ``adc, [mask,] linearity, dark, cds, bin``.
    """
    names = [s.name for s in steps]
    expected = [n for n in TORCH_STEPS if n != "mask" or "mask" in names[:2]]
    if names[: len(expected)] != expected:
        first = next((i for i, (a, b) in enumerate(zip(names, expected, strict=False)) if a != b), len(names))
        raise ConfigError(
            f"{where} starts {names[: len(expected)]}; the torch path (data.calibration.torch_device) runs "
            f"{expected} first (step {first} differs)",
            "use the default order for those steps, or set data.calibration.torch_device=null (numpy)",
        )
    return tuple(steps[: len(expected)]), len(expected)


class TorchFrontend:
    """The fused ``adc .. bin`` steps on a torch device.

    Args:
        steps: The chain's leading steps (from :func:`split_steps`); their parameters are used.
        device: A torch device string (``"cuda"``, ``"cuda:1"``, ``"cpu"``).

    Raises:
        ConfigError: The device is not available.
    """

    def __init__(self, steps: Sequence[Step], device: str) -> None:
        import torch

        try:
            self.device = torch.device(device)
            torch.empty(1, device=self.device)
        except (RuntimeError, AssertionError) as exc:
            raise ConfigError(
                f"data.calibration.torch_device={device!r} cannot be used here: {exc}",
                "set data.calibration.torch_device=null (numpy) or name a device this machine has",
            ) from exc
        self.n_steps = len(steps)
        self.mask = next((s for s in steps if isinstance(s, MaskStep)), None)
        self.bin = next(s for s in steps if isinstance(s, BinStep))

    def __call__(self, raw: RawExposure, start: int, stop: int) -> Exposure:
        """Reads ``start:stop`` of ``raw`` after ``adc .. bin``, as a numpy exposure on the CPU."""
        import torch

        det, dev = raw.detector, self.device
        frames = raw.frames[start:stop]
        if frames.shape[0] % 2:
            raise ConfigError(f"chunk of {frames.shape[0]} reads is not whole read pairs", "use an even chunk_frames")

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(dev)

        x = tensor(frames).to(torch.float32)
        inv, offset, gain2 = np.float32(1.0 / det.gain), np.float32(det.offset), np.float32(det.gain) ** 2
        coeffs = tensor(det.linear_corr.astype(np.float32))
        read_var = (np.square(det.read_noise) * det.gain**2 + 1.0 / 12.0).astype(np.float32)
        # adc, with the raw variance model (linearize): shot noise of the linear charge + read noise
        electrons = x * float(inv) + float(offset)
        value = coeffs[-1].expand_as(electrons).clone()
        slope = torch.zeros_like(electrons)
        for k in range(coeffs.shape[0] - 2, -1, -1):
            slope = slope * electrons + value
            value = value * electrons + coeffs[k]
        slope2 = slope * slope
        variance = (value.clamp(min=0.0) / slope2 * float(gain2) + tensor(read_var)) * float(inv * inv)
        read_var_e = read_var * (inv * inv)
        # linearity, dark, cds
        variance = slope2 * variance
        dt = raw.dt[start:stop]
        signal = value - tensor(det.dark.astype(np.float32))[None] * tensor(dt.astype(np.float32))[:, None, None]
        signal = signal[1::2] - signal[0::2]
        variance = (variance[1::2] - variance[0::2]).clamp(min=0.0) + 2.0 * tensor(read_var_e)
        times = 0.5 * (raw.times[start:stop][0::2] + raw.times[start:stop][1::2])
        dt = dt[1::2] - dt[0::2]
        # bin
        n = int(self.bin.size or raw.geometry.bin_size)
        keep = signal.shape[0] // n * n
        if keep == 0:
            raise ConfigError(
                f"bin size {n} exceeds the {signal.shape[0]} frames of {raw.instrument} (planet {raw.planet_id})",
                f"lower data.calibration.instruments.{raw.instrument}.bin_size",
            )
        signal = signal[:keep].reshape(keep // n, n, *signal.shape[1:]).sum(dim=1) * (1.0 / n)
        variance = variance[:keep].reshape(keep // n, n, *variance.shape[1:]).sum(dim=1) * (1.0 / n**2)

        def mean(a: np.ndarray) -> np.ndarray:
            return a[:keep].reshape(keep // n, n).mean(axis=1)

        mask = np.zeros(frames.shape[1:], dtype=bool)
        if self.mask is not None:
            mask = det.dead | sigma_clip_outliers(det.dark, self.mask.hot_sigma, self.mask.max_iters)
        return Exposure(
            instrument=raw.instrument,
            planet_id=raw.planet_id,
            signal=signal.cpu().numpy(),
            variance=variance.cpu().numpy(),
            read_variance=read_var_e,
            mask=mask,
            times=mean(times),
            dt=mean(dt),
            detector=det,
            geometry=raw.geometry,
            units="electrons",
            cds=True,
        )

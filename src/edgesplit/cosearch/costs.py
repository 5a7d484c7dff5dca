"""Per-device cost predictions for any configuration: latency, energy, peak power and memory.

Owns `DeviceCostModel` (one `CostPredictor` per device and target, fitted on ProTran's
measurements and on this host's profile file), `DeviceCost` and `PredictorRecipe` (the file
`edgesplit cosearch fit` writes: where the data is and how to fit, plus cross-validated errors;
loading it refits, so no pickled estimator is ever stored). No torch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from edgesplit.core.schema import VersionedFile
from edgesplit.cosearch.features import count_params
from edgesplit.cosearch.predictor import (
    CostPredictor,
    CrossValidation,
    PredictorSettings,
    cross_validate,
)
from edgesplit.cosearch.protran import (
    DEVICES,
    HOST_DEVICE,
    PROTRAN_SEQ_LEN,
    PROTRAN_VOCAB,
    DeviceInfo,
    Measurement,
)
from edgesplit.cosearch.space import Architecture, EncoderConfig
from edgesplit.errors import ConfigError

__all__ = [
    "TARGETS",
    "DeviceCost",
    "DeviceCostModel",
    "PredictorRecipe",
    "host_device_info",
]

Target = Literal["latency_s", "energy_j", "peak_power_w"]
TARGETS: tuple[Target, ...] = ("latency_s", "energy_j", "peak_power_w")
_HOST_POWER_NOTE = "modelled"


@dataclass(frozen=True, slots=True)
class DeviceCost:
    """Predicted costs of one config on one device (ProTran's units for ProTran devices)."""

    latency_s: float
    energy_j: float
    peak_power_w: float
    memory_bytes: float  # fp32 weights + activations of one batch at the device's batch size
    latency_std_log: float  # ensemble spread of log latency (uncertainty)


def host_device_info(memory_bytes: int = 8 * 1024**3) -> DeviceInfo:
    return DeviceInfo(
        name=HOST_DEVICE,
        kind="cpu",
        batch_size=1,
        memory_bytes=memory_bytes,
        description="this host, one thread (energy and power modelled)",
        source="host",
    )


class PredictorRecipe(VersionedFile):
    """What `cosearch fit` wrote: data sources, settings and the cross-validated errors."""

    KIND: ClassVar[str] = "edgesplit.cosearch_predictors"
    SCHEMA_VERSION: ClassVar[int] = 1

    kind: str = KIND
    schema_version: int = SCHEMA_VERSION
    protran_dir: str | None
    host_results: str | None
    settings: PredictorSettings
    devices: tuple[str, ...]
    cross_validation: dict[str, dict[str, CrossValidation]]  # device -> target -> errors


def _memory_bytes(config: EncoderConfig, arch: Architecture, batch_size: int) -> float:
    hidden = config.hidden_size
    activations = batch_size * arch.seq_len * (4 * hidden + max(config.layer_ffn()))
    attention = batch_size * max(config.layer_heads()) * arch.seq_len**2
    return 4.0 * (count_params(arch) + activations + attention)


class DeviceCostModel:
    """Predictors for every (device, target) with data; predictions cached per config key."""

    def __init__(
        self,
        predictors: dict[tuple[str, str], CostPredictor],
        devices: dict[str, DeviceInfo],
        *,
        host_seq_len: int = PROTRAN_SEQ_LEN,
        host_core_power_w: float = 15.0,
    ) -> None:
        self.predictors = predictors
        self.devices = devices
        self.host_seq_len = host_seq_len
        self.host_core_power_w = host_core_power_w
        self._cache: dict[tuple[str, str], DeviceCost] = {}

    @property
    def device_names(self) -> list[str]:
        return list(self.devices)

    @classmethod
    def fit(
        cls,
        protran: list[Measurement],
        host: Sequence[Any] | None = None,
        settings: PredictorSettings | None = None,
        *,
        devices: list[str] | None = None,
    ) -> DeviceCostModel:
        """Fit every device in `protran` (and the host if `host` measurements are given).

        `host` is a list of `profiler.HostMeasurement` (typed loosely: this module stays
        torch-free).
        """
        by_device: dict[str, list[Measurement]] = defaultdict(list)
        for m in protran:
            by_device[m.device].append(m)
        wanted = devices or sorted(by_device) + ([HOST_DEVICE] if host else [])
        predictors: dict[tuple[str, str], CostPredictor] = {}
        infos: dict[str, DeviceInfo] = {}
        host_seq_len, host_power = PROTRAN_SEQ_LEN, 15.0
        for name in wanted:
            if name == HOST_DEVICE:
                if not host:
                    raise ConfigError(
                        "device host-cpu needs host measurements (run `cosearch profile`)"
                    )
                archs = [h.architecture() for h in host]
                cpu = np.array([h.cpu_s for h in host])
                predictors[(name, "latency_s")] = CostPredictor(settings).fit(archs, cpu)
                host_seq_len = host[0].settings.seq_len
                host_power = host[0].settings.core_power_w
                infos[name] = host_device_info()
                continue
            rows = by_device.get(name)
            if not rows:
                raise ConfigError(
                    f"no ProTran measurements for device {name!r}; have {sorted(by_device)}"
                )
            archs = [m.architecture for m in rows]
            for target in TARGETS:
                y = np.array([getattr(m, target) for m in rows])
                target_settings = settings
                if target == "peak_power_w":
                    # Peak power is a level, not a sum of work: additive terms do not apply.
                    target_settings = (settings or PredictorSettings()).model_copy(
                        update={"method": "gbm"}
                    )
                predictors[(name, target)] = CostPredictor(target_settings).fit(archs, y)
            infos[name] = DEVICES[name]
        return cls(predictors, infos, host_seq_len=host_seq_len, host_core_power_w=host_power)

    def architecture(self, config: EncoderConfig, device: str) -> Architecture:
        text = config.modality == "text"
        if device == HOST_DEVICE:  # as the profiler builds it: ViT-Base 16x16x3 patches for images
            return config.architecture(
                self.host_seq_len,
                vocab_size=PROTRAN_VOCAB if text else 0,
                patch_pixels=0 if text else 768,
            )
        return config.architecture(PROTRAN_SEQ_LEN, vocab_size=PROTRAN_VOCAB if text else 0)

    def predict(self, config: EncoderConfig, device: str) -> DeviceCost:
        """Predicted costs (cached)."""
        key = (config.key(), device)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        if device not in self.devices:
            raise ConfigError(
                f"unknown device {device!r}; fitted devices: {', '.join(self.devices)}"
            )
        arch = self.architecture(config, device)
        latency, spread = self.predictors[(device, "latency_s")].predict([arch])
        if device == HOST_DEVICE:
            energy = latency * self.host_core_power_w
            power = np.array([self.host_core_power_w])
        else:
            energy = self.predictors[(device, "energy_j")].predict([arch])[0]
            power = self.predictors[(device, "peak_power_w")].predict([arch])[0]
        cost = DeviceCost(
            latency_s=float(latency[0]),
            energy_j=float(energy[0]),
            peak_power_w=float(power[0]),
            memory_bytes=_memory_bytes(config, arch, self.devices[device].batch_size),
            latency_std_log=float(spread[0]),
        )
        self._cache[key] = cost
        return cost

    def predict_batch(
        self, configs: Sequence[EncoderConfig], device: str, targets: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """`targets` (any of `TARGETS` and "memory_bytes") of many configs on one device, one
        predictor call per target (not cached; the same values `predict` gives one by one)."""
        if device not in self.devices:
            raise ConfigError(
                f"unknown device {device!r}; fitted devices: {', '.join(self.devices)}"
            )
        archs = [self.architecture(c, device) for c in configs]
        out: dict[str, np.ndarray] = {}
        if "memory_bytes" in targets:
            batch = self.devices[device].batch_size
            out["memory_bytes"] = np.array(
                [_memory_bytes(c, a, batch) for c, a in zip(configs, archs, strict=True)]
            )
        host = device == HOST_DEVICE
        if "latency_s" in targets or (host and "energy_j" in targets):
            out["latency_s"] = np.asarray(self.predictors[(device, "latency_s")].predict(archs)[0])
        for target in ("energy_j", "peak_power_w"):
            if target not in targets:
                continue
            if host:
                out[target] = (
                    out["latency_s"] * self.host_core_power_w
                    if target == "energy_j"
                    else np.full(len(configs), self.host_core_power_w)
                )
            else:
                out[target] = np.asarray(self.predictors[(device, target)].predict(archs)[0])
        return out


def cross_validate_devices(
    protran: list[Measurement],
    settings: PredictorSettings | None = None,
    *,
    targets: tuple[Target, ...] = TARGETS,
    num_folds: int = 5,
    min_samples: int = 10,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, dict[str, CrossValidation]]:
    """k-fold errors per ProTran device and target (devices with < `min_samples` skipped).

    `on_progress(done, total, "device target")` is called before each (device, target) fit
    and once more with done == total at the end.
    """
    by_device: dict[str, list[Measurement]] = defaultdict(list)
    for m in protran:
        by_device[m.device].append(m)
    fitted = [d for d in sorted(by_device) if len(by_device[d]) >= min_samples]
    total = len(fitted) * len(targets)
    out: dict[str, dict[str, CrossValidation]] = {}
    for device in fitted:
        rows = by_device[device]
        archs = [m.architecture for m in rows]
        out[device] = {}
        for target in targets:
            if on_progress is not None:
                on_progress(sum(len(v) for v in out.values()), total, f"{device} {target}")
            target_settings = settings
            if target == "peak_power_w":
                target_settings = (settings or PredictorSettings()).model_copy(
                    update={"method": "gbm"}
                )
            y = np.array([getattr(m, target) for m in rows])
            out[device][target] = cross_validate(archs, y, target_settings, num_folds=num_folds)
    if on_progress is not None:
        on_progress(total, total, "")
    return out


def write_recipe(recipe: PredictorRecipe, path: Path) -> Path:
    from edgesplit.core.schema import write_json_file

    return write_json_file(recipe, path)

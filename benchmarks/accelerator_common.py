"""What both sides of benchmarks.accelerator share: the models, the measured settings, the
batches (the same numpy arrays on both sides), the batch-size search and the time budget."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks import common, reference
from ib_jax.contract import precision
from ib_jax.contract.model import from_config_dict
from launch import aot

# --model -> the released architecture's config (the tiny one is the tests' model).
CONFIGS = {
    "flant5xl": "configs/instructblip_flant5xl.py",
    "flant5xxl": "configs/instructblip_flant5xxl.py",
    "vicuna7b": "configs/instructblip_vicuna7b.py",
    "vicuna13b": "configs/instructblip_vicuna13b.py",
    "tiny": "configs/tiny.py",
}


def load_config(model: str, batch_size: int = 0):
    """The run config of `model` as launch.aot plans it: the paper's batch (or `batch_size`) and
    the planner's padded lengths where the config's data section leaves them out."""
    if model not in CONFIGS:
        raise ValueError(f"--model={model!r}: expected one of {sorted(CONFIGS)}")
    return aot.load_planned_config(CONFIGS[model], batch_size=batch_size or None)


# Zero-shot settings of the held-out evaluation (data_pipelines/registry.py): short-answer QA,
# captions and candidate ranking (Visual Dialog's 100 options, 20 per decoder pass).
QA = dict(num_beams=5, max_new_tokens=10, length_penalty=-1.0)
CAPTIONS = dict(num_beams=5, max_new_tokens=80, length_penalty=1.0)
RANKING = dict(num_candidates=100, candidate_len=16, chunk_size=20)


class Budget:
    """A wall-clock deadline shared by the measurements of one side.

    A measurement costs its first (compiling) call plus its timed loop; the first call of the
    next one is guessed from the last one seen, so that a measurement that cannot finish before
    the deadline is skipped instead of started."""

    def __init__(self, total_s: float):
        self.deadline = time.perf_counter() + total_s
        self.first_call_s = 0.0

    def left(self) -> float:
        """Seconds until the deadline."""
        return self.deadline - time.perf_counter()

    def allows(self, timed_loop_s: float) -> bool:
        """Whether a measurement with this timed-loop budget should still start."""
        return self.left() >= timed_loop_s + self.first_call_s

    def saw(self, first_call_s: float) -> None:
        """Record the first-call (compile) time of the measurement just done."""
        self.first_call_s = float(first_call_s)


def is_out_of_memory(error: BaseException) -> bool:
    """XLA's (and torch's) out-of-memory errors, whatever their class."""
    text = f"{type(error).__name__}: {error}"
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "OutOfMemory", "out of memory"))


def largest_batch(batch: int, attempt: Callable[[int], Any], log: Callable[[str], None]) -> Any:
    """`attempt(batch)`, halving the batch on out-of-memory until it fits (down to 1)."""
    while True:
        try:
            return attempt(batch)
        except Exception as e:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
            if not is_out_of_memory(e) or batch == 1:
                raise
            log(f"batch {batch} does not fit ({str(e).splitlines()[0][:120]}); trying {batch // 2}")
            batch //= 2


def eval_batch(config, batch: int, seed: int = 3) -> dict[str, np.ndarray]:
    """A generation/ranking batch at the config's padded lengths (no labels)."""
    out = train_batch(config, batch, seed)
    del out["labels"]
    return out


def train_batch(config, batch: int, seed: int = 1) -> dict[str, np.ndarray]:
    """A training batch at the config's padded lengths (benchmarks.common.make_batch)."""
    model_config = from_config_dict(config.model)
    d = config.data
    return common.make_batch(
        batch,
        d.image_size,
        d.qformer_max_len,
        d.text_max_len,
        d.target_max_len,
        qformer_vocab=model_config.qformer.vocab_size,
        max_token=reference.image_token(model_config),
        pad_instructions=model_config.lm_type == "t5",
        seed=seed,
    )


def candidates(config, batch: int) -> np.ndarray:
    """Ranking candidates [B, C, L] at the RANKING settings (ids + EOS, -100 pads)."""
    model_config = from_config_dict(config.model)
    return common.make_candidates(
        batch,
        RANKING["num_candidates"],
        RANKING["candidate_len"],
        max_token=reference.image_token(model_config),
        eos=model_config.text.eos_token_id,
    )


def eval_batch_size(config, requested: int = 0) -> int:
    """Generation/ranking batch: `requested`, else the config's evaluation batch, else 16."""
    evaluation = config.get("eval") or {}
    return int(
        requested or config.data.get("eval_batch_size") or evaluation.get("batch_size") or 16
    )


def is_fp32(config) -> bool:
    """Whether the run config computes and stores everything in fp32 (the tiny model): then the
    two sides share weights and are checked to agree, instead of running mixed precision."""
    policy = precision.resolve(config.model, config.train)
    return policy.compute == "float32" and policy.frozen == "float32"

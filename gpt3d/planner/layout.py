"""One candidate parallel layout and the divisibility rules it must satisfy."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from gpt3d.config.divisibility import layout_rules_broken
from gpt3d.config.model import ModelConfig

RECOMPUTE_MODES = ("none", "selective", "full")
SCHEDULES = ("1f1b", "gpipe", "zbh1", "zbv")
"""1f1b with vp > 1 is interleaved 1F1B; zbh1 runs one chunk per rank, zbv exactly two (schedule.py)."""


@dataclass(frozen=True)
class Layout:
    """A parallel layout: degrees, micro-batch and the memory-saving switches."""

    tp: int
    pp: int
    dp: int
    vp: int = 1
    micro_batch: int = 1
    sequence_parallel: bool = False
    recompute: str = "none"
    distributed_optimizer: bool = False
    schedule: str = "1f1b"

    def __post_init__(self):
        for name in ("tp", "pp", "dp", "vp", "micro_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"layout {name} must be >= 1, got {getattr(self, name)}")
        if self.recompute not in RECOMPUTE_MODES:
            raise ValueError(f"recompute must be one of {RECOMPUTE_MODES}, got {self.recompute!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule in ("gpipe", "zbh1") and self.vp != 1:
            raise ValueError(f"schedule {self.schedule} runs one model chunk per rank, got vp={self.vp}")
        if self.schedule == "zbv" and self.vp != 2:
            raise ValueError(f"schedule zbv runs exactly 2 model chunks per rank, got vp={self.vp}")

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp * self.dp

    def num_microbatches(self, global_batch: int) -> int:
        """Micro-batches per data-parallel rank per step (global_batch must divide; see `divisibility_problems`)."""
        return global_batch // (self.micro_batch * self.dp)

    def label(self) -> str:
        """Compact text, e.g. 'tp8 pp16 dp8 vp2 mb1 sp rc=selective dopt'."""
        parts = [f"tp{self.tp}", f"pp{self.pp}", f"dp{self.dp}", f"vp{self.vp}", f"mb{self.micro_batch}"]
        if self.sequence_parallel:
            parts.append("sp")
        parts.append(f"rc={self.recompute}")
        if self.distributed_optimizer:
            parts.append("dopt")
        if self.schedule != "1f1b":
            parts.append(self.schedule)
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Problem(NamedTuple):
    """Why a layout does not divide: `kind` groups layouts in the planner's report, `message` has the numbers."""

    kind: str
    message: str

    def __str__(self) -> str:
        return self.message


def divisibility_problems(model: ModelConfig, layout: Layout, num_gpus: int, global_batch: int,
                          seq_len: int, check_layers: bool = True) -> list[Problem]:
    """Every reason the layout cannot run this model on `num_gpus` GPUs (empty: it divides). `check_layers=False`
    skips the balanced-split rule (for runs with an explicit parallel.pipeline_split)."""
    out: list[Problem] = []
    t, p, d, v = layout.tp, layout.pp, layout.dp, layout.vp
    if t * p * d != num_gpus:
        out.append(Problem("tp*pp*dp != GPUs", f"tp{t}*pp{p}*dp{d} = {t * p * d} GPUs, not the {num_gpus} given"))
    micro = layout.micro_batch
    num_micro = global_batch // (micro * d)
    problems = {
        "n_heads": Problem("tp does not divide n_heads", f"tp{t} does not divide n_heads={model.n_heads}"),
        "d_ff": Problem("tp does not divide d_ff", f"tp{t} does not divide d_ff={model.d_ff}"),
        "padded_vocab": Problem("tp does not divide the vocabulary",
                                f"tp{t} does not divide the padded vocabulary {model.padded_vocab_size}"),
        "n_layers": Problem("pp*vp does not divide n_layers",
                            f"pp{p}*vp{v} = {p * v} stages do not divide n_layers={model.n_layers}"),
        "global_batch": Problem("micro_batch*dp does not divide the global batch",
                                f"global batch {global_batch} is not a multiple of micro_batch {micro} * dp{d} = "
                                f"{micro * d}"),
        "seq_len": Problem("tp does not divide seq_len", f"sequence parallel: tp{t} does not divide seq_len={seq_len}"),
    }
    # (the helper's micro-batch rule assumes vp > 1 means interleaving; here the schedule decides, below)
    broken = [rule for rule in layout_rules_broken(model, t, p, v, d, seq_len, layout.sequence_parallel,
                                                   not check_layers, global_batch, micro) if rule != "micro_batches"]
    out += [problems[rule] for rule in broken if rule not in ("global_batch", "seq_len")]
    if v > 1 and p == 1:
        out.append(Problem("vp without pp", f"vp{v} needs pp > 1"))
    if "global_batch" in broken:
        out.append(problems["global_batch"])
    elif layout.schedule == "zbv" and num_micro < p:
        out.append(Problem("zbv needs micro-batches >= pp",
                           f"zbv needs at least pp{p} micro-batches per step, got {num_micro}"))
    elif layout.schedule != "zbv" and v > 1 and num_micro % p:
        out.append(Problem("interleaving needs micro-batches % pp == 0",
                           f"interleaving (vp{v}) needs the {num_micro} micro-batches per step to be a multiple of "
                           f"pp{p}"))
    if "seq_len" in broken:
        out.append(problems["seq_len"])
    return out


LAYOUT_KEYS = {"tp": "tp", "pp": "pp", "dp": "dp", "vp": "vp", "mb": "micro_batch", "sp": "sequence_parallel",
               "recompute": "recompute", "dopt": "distributed_optimizer", "schedule": "schedule"}
"""`--layout` keys and the Layout field each sets."""
_BOOL_TEXT = {"0": False, "1": True, "false": False, "true": True, "off": False, "on": True}


def parse_layout(text: str, num_gpus: int, defaults: Layout) -> Layout:
    """`tp=8,pp=12,dp=4,vp=1,mb=1,sp=0,recompute=full` -> Layout. Keys not given keep `defaults` (the config's);
    dp defaults to num_gpus / (tp * pp). One ValueError naming the bad part and the expected form."""
    form = "expected comma-separated KEY=VALUE with keys " + ", ".join(LAYOUT_KEYS) + \
        " (e.g. tp=8,pp=12,dp=4,vp=1,mb=1,sp=0,recompute=full)"
    values: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key not in LAYOUT_KEYS or not value:
            raise ValueError(f"--layout {text!r}: bad part {part.strip()!r}; {form}")
        if key in values:
            raise ValueError(f"--layout {text!r}: {key} given twice")
        field_name = LAYOUT_KEYS[key]
        if field_name in ("sequence_parallel", "distributed_optimizer"):
            if value.lower() not in _BOOL_TEXT:
                raise ValueError(f"--layout {text!r}: {key}={value} must be 0 or 1")
            values[field_name] = _BOOL_TEXT[value.lower()]
        elif field_name in ("recompute", "schedule"):
            values[field_name] = value
        else:
            try:
                values[field_name] = int(value)
            except ValueError:
                raise ValueError(f"--layout {text!r}: {key}={value} must be an integer") from None
    merged = {**defaults.to_dict(), **values}
    if "dp" not in values:
        replica = merged["tp"] * merged["pp"]
        merged["dp"] = max(1, num_gpus // replica)
    return Layout(**merged)

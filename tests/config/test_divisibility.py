"""The layout divisibility rules live in one helper; the four places that check a layout word its answer for their own
context. Each rule is checked against a hand-picked layout, then one bad layout is shown to every caller."""
import pytest

from gpt3d.checkpoint.errors import CheckpointError
from gpt3d.checkpoint.plan import TargetLayout, check_layout
from gpt3d.config import ModelConfig
from gpt3d.config.divisibility import RULES, layout_rules_broken
from gpt3d.interop.errors import InteropError
from gpt3d.interop.megatron import _check_layout as check_megatron_layout
from gpt3d.planner.layout import Layout, divisibility_problems

# 6 heads, d_ff 96, vocab 100 padded to 128, 6 layers.
MODEL = ModelConfig(n_layers=6, d_model=24, n_heads=6, d_ff=96, seq_len=32, vocab_size=100, vocab_pad_multiple=64)


@pytest.mark.parametrize("kwargs,broken", [
    (dict(tp=2, pp=3), []),
    (dict(tp=4), ["n_heads"]),                                   # 6 heads, 128 vocab and 96 d_ff: only the heads
    (dict(tp=3), ["padded_vocab"]),                              # 128 % 3
    (dict(tp=6), ["padded_vocab"]),
    (dict(tp=2, pp=4), ["n_layers"]),
    (dict(tp=2, pp=2, vp=2), ["n_layers"]),
    (dict(tp=2, pp=4, pipeline_split_given=True), []),
    (dict(tp=2, seq_len=33, sequence_parallel=True), ["seq_len"]),
    (dict(tp=2, seq_len=33), []),
    (dict(tp=1, dp=3, global_batch=8, micro_batch=2), ["global_batch"]),
    (dict(tp=1, pp=3, vp=2, global_batch=8, micro_batch=2), ["micro_batches"]),  # 4 micro-batches, pp 3
    (dict(tp=5, pp=4, global_batch=8, micro_batch=3), ["n_heads", "padded_vocab", "d_ff", "n_layers", "global_batch"]),
])
def test_each_rule(kwargs, broken):
    got = layout_rules_broken(MODEL, **kwargs)
    assert got == broken
    assert set(got) <= set(RULES)


def test_one_bad_layout_in_every_context():
    """tp=4 breaks the heads rule; each caller says so in its own words."""
    from gpt3d.config.parallel import ParallelConfig
    from gpt3d.parallel.context import Layout as RunLayout, LayoutError, validate_layout
    with pytest.raises(LayoutError, match=r"^model.n_heads=6 is not divisible by tp=4; pick tp dividing the heads$"):
        validate_layout(RunLayout(4, 1, 1, 1), MODEL, ParallelConfig(tp=4), 8, 2, 32)
    with pytest.raises(CheckpointError, match=r"tp=4 does not divide n_heads=6; .*choose degrees that divide"):
        check_layout(MODEL, TargetLayout(tp=4, pp=1, vp=1, pipeline_split=None))
    with pytest.raises(InteropError, match=r"tp=4 does not divide n_heads=6 \(Megatron shards whole heads\)"):
        check_megatron_layout(MODEL, 4, 1, 0, "legacy")
    problems = divisibility_problems(MODEL, Layout(tp=4, pp=1, dp=1, vp=1, micro_batch=1), 4, 8, 32)
    assert [(p.kind, p.message) for p in problems] == [("tp does not divide n_heads",
                                                        "tp4 does not divide n_heads=6")]

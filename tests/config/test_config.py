"""Config loading and validation: presets, overrides, and one clear error per bad value. Starts no process."""
import pytest
import yaml

from gpt3d.config import PRESETS, ConfigError, load_config, paper_parameter_count
from gpt3d.config.run import save_config


@pytest.mark.parametrize("name", [n for n in PRESETS if n.startswith("gpt3-")])
def test_gpt3_presets_match_paper_parameter_counts(name):
    cfg = load_config(None, [f"preset={name}"])
    assert cfg.model.seq_len == 2048 and cfg.model.d_ff == 4 * cfg.model.d_model
    assert abs(cfg.model.num_parameters() / paper_parameter_count(name) - 1) < 0.02


def test_gpt3_table_rows():
    """Layers, width, heads, head size, batch (tokens) and learning rate as in Table 2.1 of the GPT-3 paper."""
    table = {"gpt3-small": (12, 768, 12, 64, 0.5e6, 6.0e-4), "gpt3-medium": (24, 1024, 16, 64, 0.5e6, 3.0e-4),
             "gpt3-large": (24, 1536, 16, 96, 0.5e6, 2.5e-4), "gpt3-xl": (24, 2048, 16, 128, 1e6, 2.0e-4),
             "gpt3-2.7b": (32, 2560, 32, 80, 1e6, 1.6e-4), "gpt3-6.7b": (32, 4096, 32, 128, 2e6, 1.2e-4),
             "gpt3-13b": (40, 5120, 40, 128, 2e6, 1.0e-4), "gpt3-175b": (96, 12288, 96, 128, 3.2e6, 0.6e-4)}
    for name, (layers, d, heads, d_head, tokens, lr) in table.items():
        cfg = load_config(None, [f"preset={name}"])
        m = cfg.model
        assert (m.n_layers, m.d_model, m.n_heads, m.d_head) == (layers, d, heads, d_head), name
        assert abs(cfg.train.global_batch_size * 2048 / tokens - 1) < 0.05, name
        assert cfg.optim.lr == pytest.approx(lr)


@pytest.mark.parametrize("name,params", [("gpt2-small", 124e6), ("gpt2-medium", 355e6), ("gpt2-large", 774e6),
                                         ("gpt2-xl", 1558e6)])
def test_gpt2_presets(name, params):
    cfg = load_config(None, [f"preset={name}"])
    assert cfg.model.seq_len == 1024 and abs(cfg.model.num_parameters() / params - 1) < 0.01


def test_parameter_count_equals_built_model():
    from gpt3d.model.gpt import build_gpt
    for overrides in ([], ["model.tie_embeddings=false"], ["model.d_head=24", "model.d_ff=100"]):
        cfg = load_config("tiny-test", overrides)
        model = build_gpt(cfg.model, seed=0)
        assert sum(p.numel() for p in model.parameters()) == cfg.model.num_parameters(padded_vocab=True)


def test_padded_vocab_is_layout_independent():
    cfg = load_config(None, ["preset=gpt3-175b"])
    assert cfg.model.padded_vocab_size == 50304
    assert all(50304 % tp == 0 for tp in (1, 2, 4, 8, 16, 32, 64, 128))


def test_overrides_and_yaml_round_trip(tmp_path):
    cfg = load_config("tiny", ["model.n_layers=2", "optim.lr=3e-4", "parallel.recompute=full"])
    assert (cfg.model.n_layers, cfg.optim.lr, cfg.parallel.recompute) == (2, 3e-4, "full")
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("overrides,message", [
    (["model.n_layer=2"], "model.n_layer: unknown key (did you mean 'n_layers'?)"),
    (["model.n_layers=abc"], "model.n_layers: expected an integer, got str 'abc'"),
    (["model.n_heads=3"], "model.n_heads: n_heads=3 does not divide d_model=128"),
    (["model.n_layers=0"], "model.n_layers: must be positive, got 0"),
    (["preset=gpt5"], "preset: unknown preset 'gpt5'"),
    (["train.seq_len=256"], "train.seq_len: 256 exceeds the position table (model.seq_len=128)"),
    (["train.global_batch_size=10", "train.micro_batch_size=4"], "train.global_batch_size: 10 is not a multiple"),
    (["model.activation=relu"], "model.activation: expected one of ['gelu_tanh', 'gelu'], got 'relu'"),
    (["parallel.vp=2"], "parallel.vp: vp=2 needs pp > 1"),
    (["model.hidden_dropout=1.5"], "model.hidden_dropout: must be in [0, 1)"),
    (["data.split=1,2"], "data.split: expected three non-negative numbers"),
    (["model.attention_pattern=alternating", "model.seq_len=100", "train.seq_len=96"],
     "model.seq_len: 100 is not a multiple of the sparse block size 32"),
    (["nonsense=1"], "nonsense: unknown key"),
    (["model.n_layers"], "--set 'model.n_layers': expected KEY=VALUE"),
])
def test_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config("tiny", overrides)
    assert message in str(info.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="no such file 'nope.yaml'"):
        load_config("nope.yaml")


def test_bad_yaml(tmp_path):
    (tmp_path / "x.yaml").write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "x.yaml")
    (tmp_path / "y.yaml").write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(tmp_path / "y.yaml")


def test_duplicate_yaml_keys_are_refused(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("model:\n  n_layers: 2\n  d_model: 64\n  n_layers: 12\n")
    with pytest.raises(ConfigError, match=rf"^config {path}: not valid YAML \(.*key 'n_layers' appears twice \(line 2 "
                                          rf"and line 4\); keep one"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"--set 'model={a: 1, a: 2}': value is not valid YAML \(.*key 'a' appears "
                                          r"twice"):
        load_config("tiny", ["model={a: 1, a: 2}"])

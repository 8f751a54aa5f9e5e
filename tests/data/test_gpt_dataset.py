"""GPT samples: determinism, exact packing, disjoint splits, blending proportions, the default corpus, and input errors."""
from __future__ import annotations

import numpy as np
import pytest

from gpt3d.config import DataConfig, DatasetSource
from gpt3d.data.blended_dataset import BlendedDataset, blending_indices
from gpt3d.data.errors import DataError
from gpt3d.data.gpt_dataset import GPTDataset, build_datasets, split_document_ranges, tokenizer_for
from gpt3d.data.indexed_dataset import IndexedDataset, write_indexed_dataset

from .conftest import CORPUS_VOCAB
from .megatron_reference import reference_write

SEQ = 16


@pytest.fixture(scope="module")
def random_prefix(tmp_path_factory):
    """60 documents of random tokens, lengths 0..40 (empty ones included, as Megatron files may have)."""
    rng = np.random.default_rng(0)
    docs = [[rng.integers(0, 1000, size=int(n)).tolist()] for n in rng.integers(0, 41, size=60)]
    prefix = str(tmp_path_factory.mktemp("gpt") / "random")
    reference_write(prefix, docs, np.uint16)
    return prefix


@pytest.fixture(scope="module")
def labelled_prefix(tmp_path_factory):
    """100 documents whose tokens all equal the document number: every token tells which document it came from."""
    rng = np.random.default_rng(1)
    prefix = str(tmp_path_factory.mktemp("gpt") / "labelled")
    write_indexed_dataset(prefix, ([d] * int(rng.integers(5, 30)) for d in range(100)), vocab_size=1000)
    return prefix


def config(*prefixes: str, weights=None, split: str = "8,1,1") -> DataConfig:
    weights = weights or [1.0] * len(prefixes)
    return DataConfig(datasets=[DatasetSource(prefix=p, weight=w) for p, w in zip(prefixes, weights)], split=split)


def test_same_seed_same_samples_different_seed_different(random_prefix):
    counts = {"train": 200, "valid": 20, "test": 5}
    a = build_datasets(config(random_prefix), SEQ, 7, counts, 1000)
    b = build_datasets(config(random_prefix), SEQ, 7, counts, 1000)
    c = build_datasets(config(random_prefix), SEQ, 8, counts, 1000)
    for name, count in counts.items():
        assert len(a[name]) == count
        same = np.stack([a[name][i] for i in range(count)])
        assert same.shape == (count, SEQ + 1) and same.dtype == np.int64
        assert np.array_equal(same, np.stack([b[name][i] for i in range(count)]))
    assert not np.array_equal(np.stack([a["train"][i] for i in range(200)]),
                              np.stack([c["train"][i] for i in range(200)]))


def test_packing_equals_the_shuffled_document_stream(random_prefix):
    indexed = IndexedDataset(random_prefix)
    documents = np.arange(10, 50)
    dataset = GPTDataset(indexed, documents, num_samples=150, seq_len=SEQ, seed=3, name="train")
    tokens_per_epoch = int(indexed.sequence_lengths[documents].sum())
    # Fewest epochs that hold 150 * SEQ + 1 tokens, each a fresh permutation of the split's documents.
    assert dataset.num_epochs == -(-(150 * SEQ + 1) // tokens_per_epoch) > 1
    epochs = dataset.doc_idx.reshape(dataset.num_epochs, len(documents))
    assert all(sorted(epoch) == documents.tolist() for epoch in epochs)
    assert not np.array_equal(epochs[0], epochs[1])
    stream = np.concatenate([indexed[int(d)] for d in dataset.doc_idx]).astype(np.int64)
    assert sorted(dataset.shuffle_idx.tolist()) == list(range(150))
    assert dataset.shuffle_idx.tolist() != list(range(150))
    for i in range(150):
        j = int(dataset.shuffle_idx[i])
        assert np.array_equal(dataset[i], stream[j * SEQ:(j + 1) * SEQ + 1])
    with pytest.raises(IndexError):
        dataset[150]


def test_split_ranges_follow_megatron():
    assert split_document_ranges(1000, [0.969, 0.03, 0.001]) == [(0, 969), (969, 999), (999, 1000)]
    # Rounding leftovers shift every boundary, so the first split absorbs them (Megatron's get_train_valid_test_split_).
    assert split_document_ranges(10, [1 / 3, 1 / 3, 1 / 3]) == [(0, 4), (4, 7), (7, 10)]
    assert split_document_ranges(5, [0.98, 0.01, 0.01]) == [(0, 5), (5, 5), (5, 5)]


def test_splits_are_disjoint_by_document(labelled_prefix):
    datasets = build_datasets(config(labelled_prefix, split="8,1,1"), SEQ, 5, {"train": 300, "valid": 40,
                                                                                "test": 40}, 1000)
    seen = {name: set(np.concatenate([ds[i] for i in range(len(ds))]).tolist()) for name, ds in datasets.items()}
    assert seen["train"] <= set(range(0, 80)) and seen["valid"] <= set(range(80, 90))
    assert seen["test"] <= set(range(90, 100))
    assert len(seen["valid"]) == 10 and len(seen["test"]) == 10  # many epochs: every document appears


def test_blending_follows_the_weights(tmp_path):
    prefixes = []
    for label in (1, 2, 3):
        prefixes.append(str(tmp_path / f"d{label}"))
        write_indexed_dataset(prefixes[-1], [[label] * 50 for _ in range(20)], vocab_size=10)
    weights = [5.0, 3.0, 2.0]
    datasets = build_datasets(config(*prefixes, weights=weights), SEQ, 1, {"train": 1000, "valid": 100}, 10)
    train = datasets["train"]
    assert isinstance(train, BlendedDataset) and len(train) == 1000
    labels = np.array([train[i][0] for i in range(1000)])
    assert all(np.all(train[i] == labels[i]) for i in range(0, 1000, 37))  # each sample from one dataset only
    counts = np.zeros(3)
    for n, label in enumerate(labels, 1):
        counts[label - 1] += 1
        assert np.all(np.abs(counts - np.array(weights) / 10 * n) <= 1.0)  # proportional at every prefix
    assert counts.tolist() == [500, 300, 200]
    again = build_datasets(config(*prefixes, weights=weights), SEQ, 1, {"train": 1000}, 10)["train"]
    assert all(np.array_equal(train[i], again[i]) for i in range(0, 1000, 11))


def test_blending_indices_use_each_dataset_in_order():
    dataset_index, sample_index = blending_indices([0.2, 0.8], 500)
    for d in (0, 1):
        assert sample_index[dataset_index == d].tolist() == list(range(int((dataset_index == d).sum())))
    with pytest.raises(DataError, match="blending weights must be positive"):
        blending_indices([1.0, 0.0], 10)


def test_error_token_beyond_vocab(random_prefix):
    with pytest.raises(DataError) as info:
        build_datasets(config(random_prefix), SEQ, 1, {"train": 10}, 512)
    max_id = IndexedDataset(random_prefix).max_token_id()
    assert str(info.value) == (f"{random_prefix}.bin: token id {max_id} >= model.vocab_size 512: the data was tokenised "
                               f"with a larger vocabulary; set model.vocab_size to at least {max_id + 1} (the "
                               f"tokenizer's vocabulary size)")


def test_error_empty_valid_split(tmp_path):
    prefix = str(tmp_path / "five")
    write_indexed_dataset(prefix, [[1] * 100 for _ in range(5)], vocab_size=10)
    cfg = config(prefix, split="98,1,1")
    assert len(build_datasets(cfg, SEQ, 1, {"train": 10, "valid": 0}, 10)["valid"]) == 0
    with pytest.raises(DataError) as info:
        build_datasets(cfg, SEQ, 1, {"train": 10, "valid": 4}, 10)
    assert str(info.value) == (f"{prefix}: data.split='98,1,1' leaves the valid split empty (5 documents in all) but 4 "
                               f"valid samples were requested; raise the valid share of data.split, add data, or "
                               f"request no valid samples (e.g. train.eval_interval=0)")


def test_error_dataset_too_small_for_one_sample(tmp_path):
    prefix = str(tmp_path / "tiny")
    write_indexed_dataset(prefix, [[1, 2, 3], [4, 5]], vocab_size=10)
    with pytest.raises(DataError) as info:
        build_datasets(config(prefix, split="1,0,0"), SEQ, 1, {"train": 1}, 10)
    assert str(info.value) == (f"{prefix}: the train split has 5 tokens in 2 documents, fewer than one sample of "
                               f"seq_len + 1 = 17 tokens; use more data, a larger train share in data.split, or a "
                               f"shorter train.seq_len")


def test_error_missing_dataset(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}/absent.idx: no such file"):
        build_datasets(config(str(tmp_path / "absent")), SEQ, 1, {"train": 1}, 10)


def test_error_bad_num_samples(random_prefix):
    with pytest.raises(DataError, match=r"unknown split\(s\) \['validation'\]"):
        build_datasets(config(random_prefix), SEQ, 1, {"validation": 1}, 1000)
    with pytest.raises(DataError, match=r"num_samples\['train'\] must be a non-negative integer, got -1"):
        build_datasets(config(random_prefix), SEQ, 1, {"train": -1}, 1000)


def test_error_tokenizer_settings(random_prefix, tmp_path):
    with pytest.raises(DataError, match="data.tokenizer_dir is set but data.datasets is empty"):
        build_datasets(DataConfig(tokenizer_dir=str(tmp_path)), SEQ, 1, {"train": 1}, 1000, cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="data.tokenizer_dir: not set, but data.datasets lists your own data"):
        tokenizer_for(config(random_prefix))


def test_default_corpus_datasets_and_tokenizer(default_corpus):
    cache, _, _ = default_corpus
    cfg = DataConfig(tokenizer_vocab_size=CORPUS_VOCAB)
    datasets = build_datasets(cfg, 64, 1234, {"train": 64, "valid": 8, "test": 2}, CORPUS_VOCAB, cache_dir=cache)
    assert [len(datasets[n]) for n in ("train", "valid", "test")] == [64, 8, 2]
    tokenizer = tokenizer_for(cfg, cache_dir=cache)
    assert tokenizer.vocab_size == CORPUS_VOCAB
    sample = datasets["train"][0]
    assert sample.shape == (65,) and sample.max() < CORPUS_VOCAB
    text = tokenizer.decode(sample)
    assert tokenizer.encode(text) is not None and len(text) > 64  # real English-like text, ~3 characters per token
    with pytest.raises(DataError, match="set model.vocab_size to at least"):
        build_datasets(cfg, 64, 1234, {"train": 1}, 300, cache_dir=cache)


def test_dataset_source_rejects_an_extension():
    from gpt3d.config import ConfigError
    with pytest.raises(ConfigError, match=r"data.datasets\[\].prefix: 'x.bin' includes the extension"):
        DatasetSource(prefix="x.bin")

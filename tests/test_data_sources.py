"""Every source kind loads: text folders, .bin/.npy shards, HF datasets; errors are clear."""

import json

import numpy as np
import pytest

from archscale.arch.errors import ArchscaleError
from archscale.sweeps.data import load_data, train_batch, validation_windows


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHSCALE_CACHE", str(tmp_path / "cache"))


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_text_folder_is_recursive_sorted_and_split_per_file(tmp_path):
    root = tmp_path / "texts"
    _write(root / "b.txt", "".join(f"bee {i:02d}\n" for i in range(40)))
    _write(root / "a" / "z.txt", "".join(f"zed {i:02d}\n" for i in range(40)))
    _write(root / "notes.md", "left out by the exclude glob")
    data = load_data(str(root), val_fraction=0.1, exclude=("*.md",))
    assert data.tokenizer == "byte" and data.vocab_size == 256 and "2 files" in data.source
    train, val = bytes(data.train).decode(), bytes(data.val).decode()
    # a/z.txt sorts before b.txt; the last tenth of each file is held out.
    assert train.startswith("zed 00\n") and "zed 35\n" in train and "zed 36\n" not in train
    assert val == "".join(f"zed {i:02d}\n" for i in range(36, 40)) + "".join(
        f"bee {i:02d}\n" for i in range(36, 40))
    single = load_data(str(root / "b.txt"), val_fraction=0.1)
    assert data.corpus["path"] == str(root) and data.corpus["size_bytes"] == 2 * 40 * 7
    assert bytes(single.val).decode() == "".join(f"bee {i:02d}\n" for i in range(36, 40))
    _write(root / "b.txt", "changed\n" * 40)
    assert load_data(str(root), val_fraction=0.1, exclude=("*.md",)).fingerprint != data.fingerprint


def test_bin_shard_uint16_default_splits_its_tail(tmp_path):
    ids = (np.arange(1000) * 7 % 5000).astype(np.uint16)
    ids.tofile(tmp_path / "tokens.bin")
    data = load_data(str(tmp_path / "tokens.bin"), val_fraction=0.1)
    assert data.tokenizer == "pretokenized" and data.vocab_size == int(ids.max()) + 1
    assert np.array_equal(data.train, ids[:900]) and np.array_equal(data.val, ids[900:])
    assert isinstance(data.train, np.memmap)
    assert load_data(str(tmp_path / "tokens.bin"), val_fraction=0.1, vocab_size=8000).vocab_size == 8000
    batch = train_batch(data, step=0, batch_size=4, seq_len=16, seed=0)
    assert batch.shape == (4, 17) and batch.dtype == np.int32


def test_bin_uint32_by_option_or_meta_json(tmp_path):
    ids = np.arange(70_000, 71_000, dtype=np.uint32)
    ids.tofile(tmp_path / "big.bin")
    by_option = load_data(str(tmp_path / "big.bin"), dtype="uint32", val_fraction=0.1)
    assert np.array_equal(by_option.val, ids[900:]) and by_option.vocab_size == 71_000
    (tmp_path / "meta.json").write_text(json.dumps({"dtype": "uint32", "vocab_size": 80_000}))
    by_meta = load_data(str(tmp_path), val_fraction=0.1)
    assert by_meta.vocab_size == 80_000 and np.array_equal(by_meta.train, ids[:900])
    assert by_meta.fingerprint != by_option.fingerprint


def test_nanogpt_folder_uses_its_val_shard(tmp_path):
    np.arange(500, dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.arange(500, 600, dtype=np.uint16).tofile(tmp_path / "val.bin")
    data = load_data(str(tmp_path))
    assert np.array_equal(data.train, np.arange(500)) and np.array_equal(data.val, np.arange(500, 600))
    windows = validation_windows(data, seq_len=8, n_tokens=64)
    assert windows.shape == (8, 9) and windows.min() >= 500


def test_npy_shards_folder_concatenates_in_order(tmp_path):
    np.save(tmp_path / "s0.npy", np.arange(0, 100, dtype=np.int64))
    np.save(tmp_path / "s1.npy", np.arange(100, 300, dtype=np.int32))
    data = load_data(str(tmp_path), val_fraction=0.1)
    assert np.array_equal(data.train, np.r_[0:90, 100:280])
    assert np.array_equal(data.val, np.r_[90:100, 280:300])
    assert data.vocab_size == 300
    one = load_data(str(tmp_path / "s1.npy"), val_fraction=0.5)
    assert np.array_equal(one.val, np.arange(200, 300))


def test_bad_shards_are_user_errors(tmp_path):
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(ArchscaleError, match="not a whole number of uint16"):
        load_data(str(tmp_path / "odd.bin"))
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "ok.bin")
    with pytest.raises(ArchscaleError, match="vocab_size >= 100"):
        load_data(str(tmp_path / "ok.bin"), vocab_size=50)
    with pytest.raises(ArchscaleError, match="already tokenized"):
        load_data(str(tmp_path / "ok.bin"), tokenizer="bpe:512")
    with pytest.raises(ArchscaleError, match="uint16' or 'uint32"):
        load_data(str(tmp_path / "ok.bin"), dtype="int8")
    np.save(tmp_path / "matrix.npy", np.zeros((3, 3), dtype=np.int32))
    with pytest.raises(ArchscaleError, match="1-D integer"):
        load_data(str(tmp_path / "matrix.npy"))
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ArchscaleError, match="not UTF-8 text"):
        load_data(str(tmp_path / "image.png"))


def test_hf_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [f"row number {i} of the corpus.\n" for i in range(40)]
    datasets.Dataset.from_dict({"body": rows, "id": list(range(40))}).save_to_disk(tmp_path / "ds")
    data = load_data(str(tmp_path / "ds"), text_field="body", val_fraction=0.1)
    assert bytes(data.val).decode() == "".join(rows[36:])
    assert bytes(data.train).decode() == "".join(rows[:36])
    with pytest.raises(ArchscaleError, match="no column 'text'"):
        load_data(str(tmp_path / "ds"))
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": rows[:30]}),
                                   "validation": datasets.Dataset.from_dict({"text": rows[30:]})})
    splits.save_to_disk(tmp_path / "dd")
    data = load_data(str(tmp_path / "dd"))
    assert bytes(data.val).decode() == "".join(rows[30:])

"""Text corpora: splits, windows addressed by index, pystdlib, tokenizers, bad input."""

from __future__ import annotations

import sys

import pytest
import torch
from omegaconf import OmegaConf

from kdrun.data.text import bits_per_byte, load_text_data, read_pystdlib, windows
from kdrun.errors import DataError


def _cfg(**kw):
    base = dict(
        name="text",
        path=None,
        glob="*",
        block_size=16,
        stride=0,
        tokenizer=None,
        val_size=0.1,
        test_size=0.1,
        split_seed=0,
        train_fraction=1.0,
    )
    return OmegaConf.create({**base, **kw})


def _corpus(root, n_files=12, lines=40):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        (root / f"f{i:02d}.txt").write_text(
            "".join(f"file {i} line {j}: def f(x): return x * {j}\n" for j in range(lines))
        )
    return root


def test_windows_are_shifted_views_addressed_by_index():
    t = torch.arange(20, dtype=torch.int32)
    x, y = windows(t, 4, 3)
    assert x.shape == (6, 4) and torch.equal(x[2], torch.tensor([6, 7, 8, 9], dtype=torch.int32))
    assert torch.equal(y[2], x[2] + 1)
    assert x.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()  # no copy


def test_directory_split_by_file_and_student_subset(tmp_path):
    d = _corpus(tmp_path / "c")
    data = load_text_data(_cfg(path=str(d), train_fraction=0.5))
    assert data.extra["split"] == "file" and data.extra["files"] == 12
    total = sum(len(f.read_bytes()) for f in d.iterdir())
    assert sum(data.extra["bytes"].values()) == total  # every byte in exactly one split
    assert data.bytes_per_token == {"train": 1.0, "val": 1.0, "test": 1.0}
    assert data.num_classes == 256 and data.in_shape == (16,)
    assert torch.equal(data.y_train[:, :-1], data.x_train[:, 1:])
    n = len(data.x_train)
    assert len(data.student_idx) == round(0.5 * n) and data.student_idx.max() < n
    again = load_text_data(_cfg(path=str(d), train_fraction=0.5))
    assert torch.equal(again.student_idx, data.student_idx)
    assert again.extra["files_sha256"] == data.extra["files_sha256"]
    text = data.tokenizer.decode(data.x_val[0].tolist())
    assert text in b"".join(f.read_bytes() for f in sorted(d.iterdir())).decode()


def test_single_file_is_split_into_contiguous_chunks(tmp_path):
    f = _corpus(tmp_path / "c", n_files=1, lines=200) / "f00.txt"
    data = load_text_data(_cfg(path=str(f)))
    assert data.extra["split"] == "chunk"
    raw = f.read_bytes()
    tr, va, te = (data.tokens[k] for k in ("train", "val", "test"))
    joined = torch.cat([tr, va, te]).to(torch.uint8).numpy().tobytes()
    assert joined == raw  # train, val, test in order, nothing lost or shared
    assert len(va) == pytest.approx(0.1 * len(raw), rel=0.2)


def test_pystdlib_is_fixed_and_records_version_and_hash():
    files = read_pystdlib()
    rels = [f.rel for f in files]
    assert rels == sorted(rels) and len(files) > 100
    assert not any(
        part in ("test", "idlelib", "site-packages") for r in rels for part in r.split("/")
    )
    data = load_text_data(_cfg(name="pystdlib", block_size=64, val_size=0.01, test_size=0.01))
    v = sys.version_info
    assert data.extra["python"] == f"{v.major}.{v.minor}.{v.micro}"
    assert len(data.extra["files_sha256"]) == 64 and data.extra["split"] == "file"


def test_bits_per_byte():
    import math

    assert bits_per_byte(math.log(2), 1.0) == pytest.approx(1.0)
    assert bits_per_byte(math.log(2) * 4, 4.0) == pytest.approx(1.0)  # 4 bytes per token


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: (d / "e.txt").write_text(""), "is empty"),
        (lambda d: (d / "b.bin").write_bytes(bytes(range(256))), "not UTF-8 text"),
    ],
)
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, make, match):
    d = _corpus(tmp_path / "c")
    make(d)
    with pytest.raises(DataError, match=match) as e:
        load_text_data(_cfg(path=str(d)))
    assert "\n" not in str(e.value) and str(d) in str(e.value)


def test_block_size_larger_than_a_split_and_missing_path(tmp_path):
    d = _corpus(tmp_path / "c", lines=3)
    with pytest.raises(DataError, match=r"block_size=4096 is larger than the \w+ split"):
        load_text_data(_cfg(path=str(d), block_size=4096))
    with pytest.raises(DataError, match="does not exist"):
        load_text_data(_cfg(path=str(tmp_path / "nope")))
    with pytest.raises(DataError, match="needs dataset.path"):
        load_text_data(_cfg())


def test_bad_tokenizer_directory(tmp_path):
    d = _corpus(tmp_path / "c")
    (tmp_path / "tok").mkdir()
    with pytest.raises(DataError, match="not a tokenizer directory"):
        load_text_data(_cfg(path=str(d), tokenizer=str(tmp_path / "tok")))


def _save_tiny_tokenizer(path, corpus):
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["[UNK]"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train([str(f) for f in sorted(corpus.iterdir())], trainer)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(path))


def test_hf_tokenizer_from_a_local_directory(tmp_path):
    d = _corpus(tmp_path / "c")
    _save_tiny_tokenizer(tmp_path / "tok", d)
    data = load_text_data(_cfg(path=str(d), tokenizer=str(tmp_path / "tok")))
    assert data.extra["tokenizer"].startswith("hf:") and data.num_classes <= 300
    assert data.bytes_per_token["train"] > 1.5  # merges: several bytes per token
    assert int(data.tokens["train"].max()) < data.num_classes
    text = data.tokenizer.decode(data.x_train[0].tolist())
    assert "line" in text

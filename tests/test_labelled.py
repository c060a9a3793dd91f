"""Labelled files that used to be read wrong without a word (issue 27): each is now read right or refused,
the error naming the file, the line or row, and the fix. Small files in tmp_path; no training."""

import pytest

from lit_llm.data import PretrainDataModule
from lit_llm.data.labelled import read_labelled


def test_a_label_that_is_not_a_whole_number_is_refused_naming_the_row(tmp_path):
    (tmp_path / "f.csv").write_text("text,label\nfine,1.0\nbad,0.9\n")
    with pytest.raises(ValueError, match=r"f\.csv, row 2 below the header: label 0\.9 is not a whole number"):
        read_labelled(str(tmp_path / "f.csv"))
    (tmp_path / "f.jsonl").write_text('{"text": "fine", "label": 1.7}\n')
    with pytest.raises(ValueError, match=r"f\.jsonl, record 1: label 1\.7 is not a whole number.*Correct the label"):
        read_labelled(str(tmp_path / "f.jsonl"))
    (tmp_path / "f.txt").write_text("1 fine\n1.7 odd\n")
    with pytest.raises(ValueError, match=r"f\.txt:2: label '1\.7' is neither an integer"):
        read_labelled(str(tmp_path / "f.txt"))
    (tmp_path / "whole.csv").write_text("text,label\nfine,1.0\nbad,0\n")  # a column pandas reads as floats
    assert read_labelled(str(tmp_path / "whole.csv")) == (["fine", "bad"], [1, 0])


def test_an_empty_cell_or_a_null_is_refused_naming_the_row_and_the_field(tmp_path):
    cases = {
        "text.csv": ("text,label\nfine,1\n,0\n", r"text\.csv, row 2 below the header has no text: its 'text' is empty"),
        "label.csv": ("text,label\nfine,\nbad,0\n", r"label\.csv, row 1 below the header has no label: its 'label' is empty"),
        "text.jsonl": ('{"text": "fine", "label": 1}\n{"text": null, "label": 0}\n',
                       r"text\.jsonl, record 2 has no text: its 'text' is missing or null. Fill it in or drop the row"),
        "label.jsonl": ('{"text": "fine", "label": null}\n', r"label\.jsonl, record 1 has no label: its 'label' is missing"),
    }
    for name, (body, error) in cases.items():
        (tmp_path / name).write_text(body)
        with pytest.raises(ValueError, match=error):
            read_labelled(str(tmp_path / name))


def test_a_jsonl_row_without_the_label_field_names_the_row_and_the_field(tmp_path):
    # streaming JSON fills a key that other rows have with None: the old `label_field not in row` never fired
    (tmp_path / "r.jsonl").write_text('{"review": "fine", "stars": 1}\n{"review": "bad"}\n{"review": "ok", "stars": 0}\n')
    with pytest.raises(ValueError, match=r"r\.jsonl, record 2 has no label: its 'stars' is missing or null"):
        read_labelled(str(tmp_path / "r.jsonl"), text_field="review", label_field="stars")
    (tmp_path / "first.jsonl").write_text('{"text": "fine"}\n{"text": "bad", "label": 0}\n')
    with pytest.raises(ValueError, match=r"first\.jsonl, record 1 has no label"):
        read_labelled(str(tmp_path / "first.jsonl"))


def test_a_file_with_bare_cr_line_ends_is_read_one_example_per_line(tmp_path):
    (tmp_path / "mac.txt").write_bytes(b"1 good\r0 bad\r1 fine")
    assert read_labelled(str(tmp_path / "mac.txt")) == (["good", "bad", "fine"], [1, 0, 1])
    (tmp_path / "dos.txt").write_bytes("1 good\r\n0 bad \u0085 still bad\r\n".encode())
    assert read_labelled(str(tmp_path / "dos.txt")) == (["good", "bad \u0085 still bad"], [1, 0])
    (tmp_path / "mac.csv").write_bytes(b"text,label\rgood,1\rbad,0\r")
    assert read_labelled(str(tmp_path / "mac.csv")) == (["good", "bad"], [1, 0])


@pytest.mark.parametrize("encoding, error", [
    ("utf-16-le", r"NUL byte at byte 1: it looks like UTF-16.*iconv -f UTF-16LE -t UTF-8"),
    ("utf-16-be", r"NUL byte at byte 0: it looks like UTF-16.*iconv -f UTF-16BE -t UTF-8"),
    ("utf-16", r"is UTF-16 \(it starts with the byte-order mark FF FE\).*iconv -f UTF-16 -t UTF-8"),
], ids=["le_without_bom", "be_without_bom", "with_bom"])
def test_a_utf16_file_is_refused_naming_the_encoding_and_the_fix(tmp_path, encoding, error):
    for name, body in {"r.txt": "1 good\n0 bad\n", "r.csv": "text,label\ngood,1\n", "r.jsonl": '{"text": "a", "label": 1}\n'}.items():
        (tmp_path / name).write_bytes(body.encode(encoding))
        for errors in ("strict", "replace"):  # replacing invalid UTF-8 would keep every NUL
            with pytest.raises(ValueError, match=error):
                read_labelled(str(tmp_path / name), encoding_errors=errors)
    corpus = tmp_path / "corpus.txt"  # the pretraining corpora go through the same check
    corpus.write_bytes("to be, or not to be\n".encode(encoding))
    for errors in ("strict", "replace"):
        with pytest.raises(ValueError, match=error):
            PretrainDataModule(corpus=str(corpus), block_size=4, encoding_errors=errors).prepare_data()

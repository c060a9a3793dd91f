"""Each cleaning step on its own."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_llm.data.cleaning import (
    Cleaner,
    DedupExact,
    DedupMinHash,
    Length,
    Lowercase,
    Quality,
    RegexReplace,
    RemoveControl,
    Stem,
    StopWords,
    StripHtml,
    Unicode,
    Whitespace,
    build_steps,
)
from tests.helpers.paths import SHAKESPEARE


def test_unicode_normalization():
    assert Unicode("NFC")("e\u0301") == "\u00e9"  # combining accent -> one code point
    assert Unicode("NFKC")("ｆｕｌｌ ﬁ") == "full fi"  # full-width letters and ligatures fold
    with pytest.raises(ValueError, match="NFC"):
        Unicode("XYZ")


def test_strip_html():
    page = "<html><style>p{}</style><p>Fish &amp; chips</p><script>x()</script><!-- c -->ok<br>next</html>"
    assert StripHtml()(page) == "Fish & chips\nok\nnext"
    assert StripHtml()("a < b and c > d") == "a < b and c > d"  # not a tag


def test_remove_control_and_extra_characters():
    assert RemoveControl()("a\x00b\x07c\u200bd\ne\tf\x9f") == "abcd\ne\tf"
    assert RemoveControl(extra="¤§")("a¤b§c") == "abc"


def test_whitespace():
    assert Whitespace()("  a \t b  \r\n\n\n\n c   \n") == "a b\n\nc"


def test_lowercase_and_regex_replace():
    assert Lowercase()("ÀB") == "àb"
    assert RegexReplace(r"^[01] ")("1 good\n0 bad") == "good\nbad"


def test_length_filter():
    f = Length(min_chars=3, max_chars=6, min_words=2)
    assert f("ab") is None and f("abcdefg") is None and f("abcd") is None and f("ab cd") == "ab cd"


def test_exact_dedup():
    d = DedupExact()
    assert [d(x) for x in ["a", "b", "a", "b ", "b"]] == ["a", "b", None, "b ", None]


def test_minhash_near_dedup():
    d = DedupMinHash(threshold=0.7, num_perm=128, ngram=3)
    base = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat by the door"
    near = base.replace("warm", "hot")
    other = "an entirely different sentence about stochastic gradient descent and learning rate warm up schedules"
    assert d(base) == base and d(near) is None and d(other) == other


def test_quality_filters():
    q = Quality(max_symbol_ratio=0.3, max_repeated_lines=0.3)
    assert q("plain words here") == "plain words here"
    assert q("#$%^&* {}[] ;;; ok") is None
    assert q("buy now\nbuy now\nbuy now\nreal line") is None


def test_stopwords_and_stemming():
    assert StopWords("english")("The cat is on the mat") == "cat mat"
    assert Stem("english")("running cats jumped") == "run cat jump"


def test_cleaner_counts_documents_per_step_and_rejects_bad_specs():
    c = Cleaner(["whitespace", {"length": {"min_chars": 3}}, "dedup_exact"])
    out = [c(x) for x in ["  hello ", "hi", "hello", "world"]]
    assert out == ["hello", None, None, "world"]
    assert c.report() == [
        {"step": "whitespace", "in": 4, "out": 4, "removed": 0},
        {"step": "length", "in": 4, "out": 3, "removed": 1},
        {"step": "dedup_exact", "in": 3, "out": 2, "removed": 1},
    ]
    with pytest.raises(ValueError, match="unknown step 'trim'.*whitespace"):
        build_steps(["trim"])
    with pytest.raises(ValueError, match=r"cleaning\[0\] \(length\).*min_len"):
        build_steps([{"length": {"min_len": 3}}])


@pytest.mark.parametrize("on_disk", [False, True])
def test_minhash_dedup_decides_as_datasketchs_lsh_index(on_disk, tmp_path):
    """DedupMinHash keeps the bands of kept documents itself (in memory or on disk); its decisions equal those of
    datasketch's MinHashLSH used directly (query, then insert what is kept) on near-duplicates at many distances."""
    from datasketch import MinHash, MinHashLSH

    words = SHAKESPEARE.read_text(encoding="utf-8").split()[:3000]
    docs = [" ".join(words[i : i + 60]) for i in range(0, 2400, 60)]
    for i in range(0, 40, 3):  # copies with 1 to 13 words changed: some within the threshold, some beyond it
        near = docs[i].split()
        for j in range(1 + i // 3):
            near[(7 * j) % 60] = f"w{j}"
        docs.append(" ".join(near))
    step = DedupMinHash(threshold=0.5)
    if on_disk:
        step.keys.spill(tmp_path / "seen.sqlite", 1 / 64)
    lsh, ours, reference = MinHashLSH(threshold=0.5, num_perm=128), [], []
    for n, text in enumerate(docs):
        ours.append(step(text) is None)
        m = MinHash(num_perm=128, seed=1)
        m.hashvalues = step.key(text)  # the signature the step computed
        duplicate = bool(lsh.query(m))
        if not duplicate:
            lsh.insert(str(n), m)
        reference.append(duplicate)
    assert ours == reference and 3 <= sum(ours) < 14  # the nearest copies removed, the farther kept


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([" ", "  ", "\t", "\u00a0", "\u3000", "\n", "\r", "\r\n", "a", "b\u0085"]),
                max_size=30).map("".join))
def test_whitespace_gives_what_its_three_patterns_give_applied_unconditionally(text):
    """Whitespace runs each pattern only where a substring test says it would change something (a speed-up); the
    output is the patterns' applied to every text, as the step was first written."""
    from lit_llm.data.cleaning import Whitespace

    step = Whitespace()
    reference = step._spaces.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n"))
    reference = step._blank.sub("\n\n", step._trailing.sub("\n", reference)).strip()
    assert step(text) == reference


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["a", " ", "\n", "\t", "\x00", "\x1b", "\x7f", "\x85", "\u200b", "\ufeff", "é", "#",
                                 "~"]), max_size=30).map("".join),
       st.sampled_from(["", "#", "#é", "\u200b"]))
def test_remove_control_gives_what_its_table_gives(text, extra):
    """RemoveControl deletes from ASCII text with bytes.translate (a speed-up); the output is str.translate's with
    the step's table, ASCII or not, with or without extra characters."""
    from lit_llm.data.cleaning import RemoveControl

    step = RemoveControl(extra)
    assert step(text) == text.translate(step._table)

"""The tokenizer has one definition: the generated table (csrc/runtime/text_table.h) is up to date
and the runtime's normalize equals aghmn_fast.data.text.normalize on every code point, on
sequences of them and on every MELD utterance."""
import os
import random
import re
import sys
import unicodedata

import pytest

from aghmn_fast.data import text_table
from aghmn_fast.data.text import normalize
from runtime_lib import INVALID, ROOT, RuntimeError_

HEADER = ROOT / "csrc" / "runtime" / "text_table.h"


def _header_unicode() -> str:
    return re.search(r'kUnicodeVersion = "([^"]+)"', HEADER.read_text()).group(1)


# The table is Unicode-version specific: another Python's unicodedata gives another table.
same_unicode = pytest.mark.skipif(
    _header_unicode() != unicodedata.unidata_version,
    reason=f"text_table.h is for Unicode {_header_unicode()}, this Python has "
           f"{unicodedata.unidata_version}")


@same_unicode
@pytest.mark.slow
def test_header_is_up_to_date():
    assert text_table.render_header() == HEADER.read_text(), (
        "csrc/runtime/text_table.h is stale: python -m aghmn_fast.data.text_table --out "
        "csrc/runtime/text_table.h")


def test_check_flags_a_stale_header(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(text_table, "render_header", lambda: "fresh\n")
    stale = tmp_path / "t.h"
    stale.write_text("old\n")
    assert text_table.main(["--check", str(stale)]) == 1
    assert "stale" in capsys.readouterr().err
    stale.write_text("fresh\n")
    assert text_table.main(["--check", str(stale)]) == 0


def test_merge_matches_normalize_on_examples():
    for s in ["Hi.", "!!!", "don't", "I'm 25", "Wow!", "...", "café", "  a  b  ", "x?!y"]:
        expanded = "".join(text_table.expansion(ord(c)) for c in s.strip())
        assert text_table.merge(expanded) == normalize(s), s


@same_unicode
@pytest.mark.slow
def test_every_code_point(runtime):
    import ctypes
    valid = [chr(cp) for cp in range(sys.maxunicode + 1) if not 0xD800 <= cp <= 0xDFFF]
    # Alone (strip() at both ends), one call each into a preallocated buffer.
    buf, needed = ctypes.create_string_buffer(64), ctypes.c_size_t()
    bad = []
    for c in valid:
        data = c.encode()
        runtime.check(runtime.lib.aghmn_normalize(data, len(data), buf, 64, ctypes.byref(needed)))
        if buf.value.decode() != normalize(c):
            bad.append(hex(ord(c)))
    assert not bad, bad[:20]
    # Between letters and before "!" (the merge of runs), all code points in one text: on a
    # difference, the chunk of 4,096 code points where it is.
    pieces = ["a" + c + "b" + c + "!" + c for c in valid]
    whole = "".join(pieces)
    if runtime.normalize(whole) != normalize(whole):
        for i in range(0, len(pieces), 4096):
            chunk = "".join(pieces[i:i + 4096])
            assert runtime.normalize(chunk) == normalize(chunk), f"code points {hex(ord(valid[i]))}+"
    for cp in (0xD800, 0xDBFF, 0xDC00, 0xDFFF):  # lone surrogates are not UTF-8
        with pytest.raises(RuntimeError_) as err:
            runtime.normalize(chr(cp))
        assert err.value.status == INVALID and "UTF-8" in err.value.message


@same_unicode
def test_random_sequences(runtime):
    rng = random.Random(0)
    # Code points where the rules are busy: whitespace (incl. \x1c-\x1f), marks, expansions
    # (İ, ß, ﬁ), letters with accents, sigma, !?, digits, CJK, emoji.
    pool = ([0x20, 0x09, 0x0A, 0x1C, 0x1F, 0x85, 0xA0, 0x2028, 0x3000, 0x0301, 0x0308, 0x0130,
             0x00DF, 0xFB01, 0x00C9, 0x00E9, 0x03A3, 0x03C3, 0x21, 0x3F, 0x27, 0x2019, 0x30,
             0x4E2D, 0x1F600, 0x212B, 0x1E9E, 0x0345, 0x1D15E]
            + list(range(0x41, 0x5B)) + list(range(0x61, 0x7B)))
    for _ in range(20000):
        s = "".join(chr(rng.choice(pool)) for _ in range(rng.randint(0, 12)))
        assert runtime.normalize(s) == normalize(s), repr(s)


def test_invalid_utf8_and_null(runtime):
    for data in (b"\xff", b"a\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"):
        with pytest.raises(RuntimeError_) as err:
            runtime.normalize_bytes(data)
        assert err.value.status == INVALID and "UTF-8" in err.value.message
    assert runtime.normalize_bytes(b"") == ""
    assert runtime.lib.aghmn_normalize(None, 3, None, 0, None) == INVALID


def test_every_meld_text(runtime):
    data = os.environ.get("AGHMN_DATA")
    if not data or not os.path.exists(os.path.join(data, "test_sent_emo.csv")):
        pytest.skip("MELD is not available (set AGHMN_DATA)")
    from aghmn_fast.data.datasets import load_meld
    texts = [t for split in ("train", "dev", "test") for d in load_meld(data, split) for t in d.texts]
    assert len(texts) > 13000
    bad = [t for t in texts if runtime.normalize(t) != normalize(t)]
    assert not bad, bad[:10]

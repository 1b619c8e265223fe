"""One function per meaning of making outside text inert (issue 19): `inert_line` shows every non-printable
character as an escape (a name in a message), `flat` turns them into spaces (prose shown or matched as words).
gone.py, plan.py, memory.py and models.py keep no copy of their own."""

from __future__ import annotations

import json
import pathlib

from batchgen import escapes, gone, plan


def test_flat_keeps_the_words_and_drops_the_layout():
    hostile = "unsupported model: x\x1b[31m\nFAKE LINE\u202e\r\t end"
    assert escapes.flat(hostile) == "unsupported model: x [31m FAKE LINE end"
    assert gone._message(json.dumps({"code": 400, "msg": hostile})) == (escapes.flat(hostile), "400")
    assert plan.cut(hostile, 200) == escapes.flat(hostile)


def test_inert_line_escapes_and_cuts_only_when_asked():
    path = "/cards/" + "x" * 400 + "\x1b[2J.json"
    assert escapes.inert_line(path, None) == "/cards/" + "x" * 400 + "\\x1b[2J.json"
    assert len(escapes.inert_line(path)) == 300 and escapes.inert_line(path).endswith("…")
    assert escapes.inert_line("evil\u202emodel", 200) == "evil\\u202emodel"


def test_no_module_keeps_its_own_escaper():
    package = pathlib.Path(escapes.__file__).parent
    copies = [
        path.name
        for path in package.rglob("*.py")
        if path.name != "escapes.py"
        and ('c.isprintable() else " "' in (text := path.read_text()) or "isprintable() else repr(" in text)
    ]
    assert copies == []

"""The house's sizes (issue 19): every module of batchgen at most 450 lines, every class at most 300, every
function at most 80, measured on the source with `ast`, so a module that grows past them fails here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "batchgen"
MODULE_LINES = 450
CLASS_LINES = 300
FUNCTION_LINES = 80


def oversized(root: Path = PACKAGE) -> list[str]:
    """Every module, class and function of the package over its limit, as `path: what N lines`."""
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        name = path.relative_to(root.parent)
        if (lines := len(source.splitlines())) > MODULE_LINES:
            found.append(f"{name}: module {lines} lines")
        for node in ast.walk(ast.parse(source, str(path))):
            if isinstance(node, ast.ClassDef):
                limit = CLASS_LINES
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                limit = FUNCTION_LINES
            else:
                continue
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            if size > limit:
                found.append(f"{name}: {node.name} {size} lines")
    return found


def test_modules_classes_and_functions_keep_to_their_sizes():
    assert oversized() == []


def test_the_measure_sees_an_oversized_module_class_and_function(tmp_path):
    body = "\n".join(f"        x{i} = {i}" for i in range(FUNCTION_LINES))
    (tmp_path / "big.py").write_text(
        f"class Big:\n    def f(self):\n{body}\n" + "\n" * (MODULE_LINES + 1), encoding="utf-8"
    )
    (tmp_path / "small.py").write_text("def g():\n    return 1\n", encoding="utf-8")
    assert oversized(tmp_path) == [
        f"{tmp_path.name}/big.py: module {FUNCTION_LINES + 2 + MODULE_LINES + 1} lines",
        f"{tmp_path.name}/big.py: f {FUNCTION_LINES + 1} lines",
    ]


def test_the_one_bounded_reader_reads_whole_files_or_the_newest_whole_lines(tmp_path):
    from batchgen.files import read_bounded

    log = tmp_path / "log.jsonl"
    log.write_bytes(b"first line\nsecond\nthird\n")
    assert read_bounded(log, 100, "the log") == b"first line\nsecond\nthird\n"
    assert read_bounded(log, 10, "the log") == "the log is 24 bytes; the limit is 10"
    assert read_bounded(log, 10, "the log", tail=True) == b"third\n"  # 'd\nthird\n': the cut line is dropped
    assert read_bounded(log, 5, "the log", tail=True) == b""  # no whole line in the newest 5 bytes
    link = tmp_path / "link.jsonl"
    link.symlink_to(log)
    assert read_bounded(link, 100, "the log") == log.read_bytes()
    assert str(read_bounded(link, 100, "the log", follow=False, tail=True)).startswith("cannot read the log")
    assert read_bounded(tmp_path, 100, "the folder") == "cannot read the folder: a directory"

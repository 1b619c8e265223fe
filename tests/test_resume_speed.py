"""The shortcuts a large resume takes must answer exactly what the long way did: which finished items lost a
file (plan: one folder listing instead of a stat per file), which stem a file credits (names.stem_of without
pathlib), who holds a stem (names.Names), and whether the API key is in any value (runner: one look at all)."""

from __future__ import annotations

import gc
import os
from pathlib import Path, PurePosixPath

import pytest

from batchgen import manifest, names, plan, runner
from batchgen.config import Secret
from batchgen.errors import ManifestError
from batchgen.records import new_record

from .helpers import make_settings, manifest_of, run

KEY = "sk-live-0123456789abcdefghij"


def _items(tmp_path: Path, rows: list[tuple[str, str]]) -> list[manifest.Item]:
    path = tmp_path / "m.csv"
    path.write_text("id,prompt\n" + "".join(f"{i},{p}\n" for i, p in rows), encoding="utf-8")
    return manifest.load(path)


def _done(item: manifest.Item, files: list[str]) -> dict[str, object]:
    record = dict(new_record(item.request))
    record.update(state="succeeded", task_id=f"task-{item.id}", files=files, sha256=["0" * 64] * len(files))
    return record


def test_a_finished_item_is_fetched_again_exactly_when_path_is_file_says_a_file_is_gone(tmp_path):
    out = tmp_path / "out"
    (out / "zoo").mkdir(parents=True)
    (out / "kept.png").write_bytes(b"x")
    (out / "zoo" / "fox.png").write_bytes(b"x")
    (out / "target.png").write_bytes(b"x")
    os.symlink(out / "target.png", out / "link.png")  # a link to a file: a file, as Path.is_file sees it
    os.symlink(out / "nowhere.png", out / "dangling.png")
    (out / "folder.png").mkdir()  # a folder where the image was: not a file
    os.mkfifo(out / "fifo.png")  # a FIFO where the image was: not a file, and never opened
    cases = {
        "kept": (["kept.png"], False),
        "gone": (["gone.png"], True),
        "nested": (["zoo/fox.png"], False),
        "nestedgone": (["zoo/owl.png"], True),
        "nofolder": (["nope/owl.png"], True),
        "linked": (["link.png"], False),
        "dangling": (["dangling.png"], True),
        "folder": (["folder.png"], True),
        "dotted": (["zoo/../kept.png"], False),  # not a plain name: checked on its own, as before
        "fifo": (["fifo.png"], True),
        "absolute": ([str(out / "kept.png")], False),  # what Path.is_file says of DIR / an absolute name
        "case": (["KEPT.png"], not (out / "KEPT.png").is_file()),  # a case-insensitive file system: its stat
        "half": (["kept.png", "gone2.png"], True),  # one file of two gone: fetched again
    }
    items = _items(tmp_path, [(item_id, f"a prompt for {item_id}") for item_id in cases])
    records = {item.id: _done(item, cases[item.id][0]) for item in items}
    made = plan.make_plan(items, records, retry_failed=False, directory=out)  # type: ignore[arg-type]
    missing = {item.id for item in made.missing}
    assert missing == {item_id for item_id, (_, gone) in cases.items() if gone}
    assert {item.id for item, _ in made.resume} == missing  # fetched again from its task
    for item_id, (files, _) in cases.items():  # the long way agrees on every case
        assert (item_id in missing) == any(not (out / name).is_file() for name in files), item_id


@pytest.mark.parametrize(
    "name",
    ["a.png", "a", ".png", "a.", ".", "..", "", "a..png", "a.b.c", ".a.b", "x..", " a.png", "é.PNG", "...", "..a"],
)
def test_stem_of_a_plain_name_is_pathlibs(name):
    path = PurePosixPath(name)
    assert names.stem_of(name) == (str(path.with_suffix("")) if path.suffix else name)


def test_a_stem_credited_to_one_then_two_items_is_held_against_every_other():
    held = names.Names(["a", "b", "c"], [("a", ["x.png"])])
    assert not held.credited_to_other("a", "x.png") and held.credited_to_other("b", "X.PNG")
    held.credit("a", ["x.jpg"])  # the same item again: still its own
    assert not held.credited_to_other("a", "x.webp")
    held.credit("b", ["x.png"])  # a second item: now each sees the other
    assert held.credited_to_other("a", "x.png") and held.credited_to_other("b", "x.png")
    assert held.credited_to_other("c", "x.png") and not held.held_by_other("c", "c.png")


@pytest.mark.parametrize("order", [1, -1])
@pytest.mark.parametrize("stems", [False, True])
def test_who_plans_a_name_is_the_smallest_of_its_case_folded_twins_however_the_ids_come(order, stems):
    """Names does not store an id that plans its own name (the default names): the answers are those of a
    table of every id, the smallest of case-folded twins owning their name."""
    ids = ["fox", "Fox", "FOX", "owl", "Owl", "cat", "b", "B", "zebra-1", "Zebra-1"][::order]
    rendered = {i: f"x-{i}" for i in ids} if stems else None
    held = names.Names(ids, [], template="x-{id}" if stems else names.DEFAULT_TEMPLATE, stems=rendered)
    stem = (lambda i: f"x-{i}") if stems else (lambda i: i)
    owner = {}
    for item_id in sorted(ids):
        owner.setdefault(stem(item_id).casefold(), item_id)
    for item_id in ids:
        for other in [*ids, "dog", "FOXES"]:
            name = f"{stem(other)}.png"
            expected = owner.get(stem(other).casefold(), item_id) != item_id
            assert held.held_by_other(item_id, name) == expected, (item_id, name)
        twin = owner[stem(item_id).casefold()] != item_id
        assert ("~" in held.stems(item_id, 1)[0]) == twin, item_id  # a twin that does not own it: a ~ name


def test_the_key_is_refused_in_any_value_but_not_when_two_values_only_make_it_together(tmp_path):
    half = len(KEY) // 2
    apart = _items(tmp_path, [("one", f"ends {KEY[:half]}"), ("two", f"{KEY[half:]} starts")])
    runner._refuse_key(apart, None, Secret(KEY))  # its halves in two items: no value holds the key
    hidden = _items(tmp_path, [("one", "a plain prompt"), ("two", f"a prompt with {KEY.upper()} in it")])
    with pytest.raises(ManifestError) as caught:
        runner._refuse_key(hidden, None, Secret(KEY))
    assert "m.csv:3" in str(caught.value) and "prompt" in str(caught.value)


def test_the_key_url_encoded_in_one_item_of_thousands_is_found_past_the_first_thousand(tmp_path):
    encoded = "".join(f"%{ord(c):02X}" if not c.isalnum() else c for c in KEY)
    rows = [(f"item-{n:04d}", f"a prompt number {n}") for n in range(2500)]
    rows[1700] = ("item-1700", f"see {encoded} here")
    with pytest.raises(ManifestError) as caught:
        runner._refuse_key(_items(tmp_path, rows), None, Secret(KEY))
    assert [p.line for p in caught.value.problems] == [1702]  # the header is line 1, item-0000 line 2


async def test_a_run_freezes_what_it_loaded_and_gives_it_back_at_its_end(sim_factory, tmp_path):
    gc.unfreeze()
    frozen: list[int] = []
    path = manifest_of(tmp_path / "m.yaml", ["a fox", "an owl"])
    loaded = runner.make_plan

    def spy(*args: object, **kwargs: object) -> plan.Plan:
        frozen.append(gc.get_freeze_count())  # just after loading
        return loaded(*args, **kwargs)  # type: ignore[arg-type]

    runner.make_plan = spy  # type: ignore[assignment]
    try:
        async with sim_factory() as sim:
            outcome = await run(make_settings(path, tmp_path / "out", sim))
    finally:
        runner.make_plan = loaded  # type: ignore[assignment]
    assert outcome.exit_code == 0 and frozen and frozen[0] > 0
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("char", ["a", "é", "狐", "𝔘"])  # 1 to 4 bytes in UTF-8
def test_check_lengths_refuses_exactly_the_stems_whose_worst_name_is_too_long(tmp_path, char):
    """The stems check_lengths takes without looking (short enough whatever their characters) are a subset of
    those the long way takes: around the limit, a stem is refused exactly when its worst name is too long."""
    out = tmp_path / "out"
    out.mkdir()
    items = _items(tmp_path, [("one", "a prompt")])
    limit = names._name_max(out)
    for length in range(10, 90):
        stem = char * length
        worst = len((stem + names.WORST_INDEX).encode()) + len(names.WORST_SUFFIX)
        too_long = worst > limit or len(os.fsencode(out.resolve())) + 1 + worst > names.PATH_MAX - 1
        try:
            names.check_lengths(items, {"one": stem}, out)
        except ManifestError:
            assert too_long, (char, length)
        else:
            assert not too_long, (char, length)

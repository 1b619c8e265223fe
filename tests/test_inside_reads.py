"""A file that must lie inside a folder (a wildcard file, a reference image) is checked on the descriptor the
read uses, not only on its name beforehand: a link swapped in between the check and the open reads nothing from
outside (ATTACKS 3, a hostile file system)."""

from __future__ import annotations

import os

from batchgen.files import read_bounded


def test_a_link_leading_out_of_the_folder_is_refused_by_the_read_itself(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2-line\n", "utf-8")
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "swapped.txt").symlink_to(secret)  # as if swapped in after the caller's own check
    got = read_bounded(folder / "swapped.txt", 1000, "'swapped.txt'", within=folder)
    assert isinstance(got, str) and "outside the folder" in got and "hunter2" not in got
    assert read_bounded(folder / "swapped.txt", 1000, "'swapped.txt'") == b"hunter2-line\n"  # no `within`: read


def test_a_file_inside_is_read_through_a_link_and_through_a_linked_folder(tmp_path):
    folder = tmp_path / "job"
    (folder / "words").mkdir(parents=True)
    (folder / "words" / "animals.txt").write_text("fox\n", "utf-8")
    (folder / "alias.txt").symlink_to(folder / "words" / "animals.txt")
    assert read_bounded(folder / "alias.txt", 1000, "alias", within=folder) == b"fox\n"
    linked = tmp_path / "linked-job"
    linked.symlink_to(folder)  # the manifest's folder reached through a link: the folder is resolved too
    assert read_bounded(linked / "words" / "animals.txt", 1000, "w", within=linked) == b"fox\n"


def test_a_folder_swapped_for_a_link_after_the_check_reads_nothing_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "styles.txt").write_text("secret-style\n", "utf-8")
    folder = tmp_path / "job"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "styles.txt").write_text("watercolour\n", "utf-8")
    assert read_bounded(folder / "sub" / "styles.txt", 1000, "s", within=folder) == b"watercolour\n"
    os.rename(folder / "sub", tmp_path / "old-sub")  # the swap: sub/ becomes a link to a folder outside
    (folder / "sub").symlink_to(outside)
    got = read_bounded(folder / "sub" / "styles.txt", 1000, "s", within=folder)
    assert isinstance(got, str) and "secret" not in got

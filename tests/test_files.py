"""All-or-nothing files: both of a group or neither, the umask's mode, no temporary file left."""

from __future__ import annotations

import os

import pytest

from trainables.files import atomic_paths, write_text_atomic


def test_a_group_is_renamed_into_place_only_when_every_file_was_written(tmp_path):
    first, second = tmp_path / "t.csv", tmp_path / "t.curves.csv"
    first.write_text("old")
    with pytest.raises(RuntimeError, match="disk"):
        with atomic_paths([first, second]) as (a, b):
            a.write_text("new")
            raise RuntimeError("disk full while writing the second")
    assert first.read_text() == "old", "a failed group left its first file half-replaced"
    assert not second.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"], "a temporary file was left behind"

    with atomic_paths([first, second]) as (a, b):
        a.write_text("new")
        b.write_text("curves")
    assert (first.read_text(), second.read_text()) == ("new", "curves")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.curves.csv"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_user_s_umask_not_mkstemp_s_0600(tmp_path, umask):
    old = os.umask(umask)
    try:
        target = write_text_atomic(tmp_path / "summary.json", "{}")
        plain = tmp_path / "plain"
        plain.write_text("{}")
    finally:
        os.umask(old)
    assert oct(target.stat().st_mode & 0o777) == oct(plain.stat().st_mode & 0o777) == oct(0o666 & ~umask)

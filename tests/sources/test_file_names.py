"""What the numbers in frame file names say (the rule placement relies on), and the
quarantine list read back at a restart."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from flyprep.sources.file_names import NameRule, name_number
from flyprep.sources.quarantine import Quarantine

D = Path("/scan")


def test_the_last_number_of_a_name_not_the_h5_suffix() -> None:
    assert name_number(D / "scan_000012.h5") == ((str(D), "scan_", ".h5"), 12, "000012")
    assert name_number(D / "run3_frames.h5") == ((str(D), "run", "_frames.h5"), 3, "3")
    assert name_number(D / "frames.h5") is None
    assert name_number(D / "scan.000012") == ((str(D), "scan.", ""), 12, "000012")


def test_names_numbering_files_give_the_next_name_and_a_gap() -> None:
    rule = NameRule()
    rule.note(D / "s_01.h5", 0)
    rule.note(D / "s_02.h5", 10)  # 10 frames in the first: numbers do not count frames
    assert rule.refuted and not rule.numbers_frames
    assert rule.is_successor(D / "s_02.h5", D / "s_03.h5", 20)
    assert not rule.is_successor(D / "s_02.h5", D / "s_04.h5", 20)
    assert rule.missing_before(D / "s_02.h5", 10, D / "s_04.h5", 20) == D / "s_03.h5"
    assert rule.missing_before(D / "s_02.h5", 10, D / "s_03.h5", 20) is None


def test_names_numbering_frames_tell_an_unreadable_files_count() -> None:
    rule = NameRule()
    rule.note(D / "f_000000.h5", 0)
    rule.note(D / "f_000100.h5", 100)
    assert rule.numbers_frames and rule.offset == 0
    assert rule.is_successor(D / "f_000100.h5", D / "f_000200.h5", 200)
    # f_000200.h5 unreadable at frame 200; the next file's name says it held 50 frames
    assert rule.would_count(D / "f_000200.h5", 200, [(D / "f_000250.h5", 50)])
    assert rule.count_between(D / "f_000200.h5", 200, D / "f_000250.h5") == 50
    assert not rule.would_count(D / "f_000300.h5", 250, [])  # its number is not its start
    # a readable pair that contradicts the rule: no count is taken from names
    fresh = NameRule()
    assert not fresh.would_count(D / "g_0.h5", 0, [(D / "g_5.h5", 4), (D / "g_10.h5", 5)])


def test_the_quarantine_lists_before_it_moves_and_reads_back_what_it_can(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scan = tmp_path / "scan"
    (scan / "sub").mkdir(parents=True)
    bad = scan / "sub" / "x.h5"
    bad.write_bytes(b"junk")
    q = Quarantine(scan, "quarantine")
    target = q.put(bad, "unreadable", [3, 4], move=True, reserved=False)
    assert target == scan / "quarantine" / "sub__x.h5" and target.read_bytes() == b"junk"
    again = scan / "sub" / "x.h5"
    again.write_bytes(b"junk 2")
    assert q.put(again, "unreadable", [], move=True, reserved=False).name == "sub__x.h5.1"
    assert q.put(scan / "gone.h5", "never written", [], move=True, reserved=True) is None
    with open(q.listing, "a") as f:
        f.write("not json\n[1, 2]\n")
    with caplog.at_level(logging.WARNING):
        entries = q.entries()
    assert [(e["file"], e["moved_to"], e["indices"], e["reserved"]) for e in entries] == [
        ("sub/x.h5", "sub__x.h5", [3, 4], True), ("sub/x.h5", "sub__x.h5.1", [], True),
        ("gone.h5", None, [], True)]
    assert "line 4 is not a quarantine entry" in caplog.text
    assert "line 5 is not a quarantine entry" in caplog.text

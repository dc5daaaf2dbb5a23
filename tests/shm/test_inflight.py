"""The in-flight board: what a stage holds, readable by another process after the stage died."""
from __future__ import annotations

import os
import signal

from shm_testutil import EXIT_TIMEOUT_S, python_c

from shm.inflight import (DEFAULT_CAPACITY, ENTRY_BYTES, HEADER_BYTES, MAX_ID_BYTES,
                          InFlightBoard, board_path, read_board)


def test_entries_come_and_go_and_are_reused(inst):
    board = InFlightBoard.create(inst.name, "decision", capacity=4)
    try:
        assert read_board(inst.name, "decision") == []
        for rid in ("a", "chatcmpl-" + "f" * 32, "c"):
            assert board.add(rid)
        assert board.add("a") and len(board) == 3     # taking a request twice notes it once
        board.remove("chatcmpl-" + "f" * 32)
        board.remove("never-added")                  # letting go of an unknown id is harmless
        assert read_board(inst.name, "decision") == ["a", "c"]
        assert board.add("d") and board.add("e")       # "d" takes the freed entry
        assert read_board(inst.name, "decision") == ["a", "d", "c", "e"]
        # Full: the fifth is refused and counted, the others stay.
        assert not board.add("f") and board.untracked == 1
        assert not board.add("x" * (MAX_ID_BYTES + 1)) and board.untracked == 2
        assert read_board(inst.name, "decision") == ["a", "d", "c", "e"]
    finally:
        board.close()
    assert os.stat(board_path(inst.name, "decision")).st_mode & 0o777 == 0o600


def test_a_restarted_stage_starts_with_an_empty_board(inst):
    old = InFlightBoard.create(inst.name, "vision")
    old.add("left-by-the-dead-one")
    new = InFlightBoard.create(inst.name, "vision")
    try:
        assert read_board(inst.name, "vision") == []
        new.add("mine")
        old.add("the old mapping no longer counts")   # it maps the replaced file
        assert read_board(inst.name, "vision") == ["mine"]
    finally:
        old.close()
        new.close()


def test_an_entry_without_its_length_is_free(inst):
    """The length is stored after the id: a stage killed in between leaves no half id."""
    board = InFlightBoard.create(inst.name, "audio", capacity=2)
    board.add("whole")
    board.close()
    path = board_path(inst.name, "audio")
    with open(path, "r+b") as f:          # id bytes of a second entry, its length still 0
        f.seek(HEADER_BYTES + ENTRY_BYTES + 4)
        f.write(b"torn")
    assert read_board(inst.name, "audio") == ["whole"]
    assert read_board(inst.name, "no-such-stage") == []


def test_the_board_of_a_killed_process_is_read_by_another(inst, children):
    p = python_c(f"""
        import time
        from shm.inflight import InFlightBoard
        board = InFlightBoard.create({inst.name!r}, "decision")
        for i in range(100):
            board.add(f"req-{{i}}")
        for i in range(0, 100, 2):
            board.remove(f"req-{{i}}")
        print("ready", flush=True)
        time.sleep(60)
    """)
    children.append(p)
    assert p.stdout.readline().strip() == "ready"
    os.kill(p.pid, signal.SIGKILL)
    p.wait(EXIT_TIMEOUT_S)
    assert read_board(inst.name, "decision") == [f"req-{i}" for i in range(1, 100, 2)]
    # Sparse: the file is as long as DEFAULT_CAPACITY entries, only used pages take memory.
    st = os.stat(board_path(inst.name, "decision"))
    assert st.st_size == HEADER_BYTES + DEFAULT_CAPACITY * ENTRY_BYTES
    assert st.st_blocks * 512 < st.st_size // 4

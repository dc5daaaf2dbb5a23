"""How `autoglm topic list/info` names a shm channel's endpoints (no pipeline needed)."""
from launch.inspect_topics import _endpoints
from shm.inflight import InFlightBoard, board_writer_pid


def test_a_live_endpoint_is_named_by_the_stage_whose_process_it_is():
    stage_of_pid = {812: "decision", 900: "gateway"}
    assert _endpoints(["decision"], [(812, True)], stage_of_pid) == ["decision (pid 812)"]
    # Declared but not (yet) at the channel: the name alone.
    assert _endpoints(["gateway"], [], stage_of_pid) == ["gateway"]
    # A cursor left by the stage's earlier, dead process, and one of a tool: listed apart.
    assert _endpoints(["gateway"], [(900, True), (700, False), (1234, True)], stage_of_pid) == \
        ["gateway (pid 900)", "pid 700 (dead)", "pid 1234"]
    # The stage's process died and was not restarted: its endpoint says so.
    assert _endpoints(["decision"], [(812, False)], stage_of_pid) == ["decision (pid 812, dead)"]
    # A pid that belongs to a stage not declared on this channel stays a pid.
    assert _endpoints(["vision"], [(812, True)], stage_of_pid) == ["vision", "pid 812"]


def test_board_writer_pid_is_the_process_that_made_the_board(tmp_path):
    import os

    from shm.instance import Instance

    with Instance.create("inspect-board", root=tmp_path, handle_signals=False):
        assert board_writer_pid("inspect-board", "decision", root=tmp_path) is None
        board = InFlightBoard.create("inspect-board", "decision", root=tmp_path)
        try:
            assert board_writer_pid("inspect-board", "decision", root=tmp_path) == os.getpid()
        finally:
            board.close(unlink=True)


"""A stage's ready detail: written by the runtime, read by the launcher and the gateway."""


def test_a_ready_detail_reads_back_as_written():
    from runtime.compute import RESIZES_FRAMES, read_ready_detail, ready_detail

    assert ready_detail("cuda:0", [RESIZES_FRAMES]) == "device cuda:0; resizes frames"
    assert read_ready_detail(ready_detail("cuda:0", [RESIZES_FRAMES])) == ("cuda:0", [RESIZES_FRAMES])
    assert read_ready_detail(ready_detail("cpu")) == ("cpu", [])
    assert read_ready_detail(ready_detail(None, ["x"])) == (None, ["x"])
    assert read_ready_detail("") == (None, [])

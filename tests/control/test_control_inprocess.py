"""Control-plane pieces that need no second process: naming, config XML, the QoS table's
choices, input errors, fork safety, asyncio reading, echo."""
# (no `from __future__ import annotations`: cyclonedds resolves IDL field types at run time)

import asyncio
import os
import threading
import time
import uuid
from dataclasses import dataclass

import pytest
from cyclonedds.core import Policy, Qos
from cyclonedds.idl import IdlStruct
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic

from control import messages as m
from control import topics as t
from control.aio import AsyncReader
from control.ddsconfig import domain_xml
from control.echo import echo, format_record
from control.naming import DOMAIN_ID_MAX, DOMAIN_ID_MIN, domain_id_for, partition_for
from control.plane import ControlPlane, ControlPlaneError, ReaderSet


def unique_instance(tag: str) -> str:
    return f"test-{tag}-{uuid.uuid4().hex[:10]}"


def test_domain_ids_are_stable_in_range_and_spread():
    names = [f"inst-{i}" for i in range(500)]
    ids = [domain_id_for(n) for n in names]
    assert ids == [domain_id_for(n) for n in names]
    assert all(DOMAIN_ID_MIN <= d <= DOMAIN_ID_MAX for d in ids)
    assert len(set(ids)) > 90  # uses (nearly) the whole 1..101 range
    assert partition_for("lab-1") == "autoglm.lab-1"


@pytest.mark.parametrize("bad", ["", "a b", "x*", "q?", "a" * 65, "ü"])
def test_bad_instance_names_are_rejected_with_the_reason(bad):
    with pytest.raises(ValueError, match="instance name"):
        domain_id_for(bad)


def test_bad_node_name_and_domain_id_are_rejected():
    with pytest.raises(ValueError, match="node name"):
        ControlPlane("ok", "bad name")
    with pytest.raises(ValueError, match="domain id"):
        ControlPlane("ok", "node", domain_id=233)


def test_config_xml_is_loopback_only_and_unicast_by_default():
    xml = domain_xml(7)
    assert '<NetworkInterface name="lo"/>' in xml
    assert "<AllowMulticast>false</AllowMulticast>" in xml
    assert '<Peer address="127.0.0.1"/>' in xml
    assert 'Domain id="7"' in xml
    assert "eth" not in xml
    assert 'multicast="true"' in domain_xml(7, multicast=True)


def test_plane_overrides_user_cyclonedds_uri(monkeypatch):
    monkeypatch.setenv("CYCLONEDDS_URI", "<garbage")
    with ControlPlane(unique_instance("uri"), "node") as plane:
        assert os.environ["CYCLONEDDS_URI"].startswith("<CycloneDDS>")
        assert f'Domain id="{plane.domain_id}"' in os.environ["CYCLONEDDS_URI"]


def test_qos_table_profiles():
    assert t.REQUEST.profile is t.STREAM and t.CANCEL.profile is t.STREAM
    assert t.STAGE_EVENT.profile is t.STREAM and t.LIFECYCLE_COMMAND.profile is t.STREAM
    assert t.CONFIG.profile is t.LATEST and t.STAGE_STATE.profile is t.LATEST
    assert t.HEARTBEAT.profile is t.SAMPLE and t.TRACE_SPAN.profile is t.TRACE
    q = t.STREAM.writer_qos()
    assert q[Policy.History] == Policy.History.KeepAll
    assert q[Policy.Durability] == Policy.Durability.Volatile
    q = t.LATEST.writer_qos()
    assert q[Policy.Durability] == Policy.Durability.TransientLocal
    assert q[Policy.History] == Policy.History.KeepLast(1)
    assert q[Policy.DestinationOrder] == Policy.DestinationOrder.BySourceTimestamp
    assert t.SAMPLE.writer_qos()[Policy.Reliability] == Policy.Reliability.BestEffort
    assert t.STREAM.observer_qos()[Policy.Reliability] == Policy.Reliability.BestEffort
    assert t.topic_by_name("request") is t.REQUEST
    assert t.topic_by_name("autoglm/lifecycle/state") is t.STAGE_STATE
    with pytest.raises(ValueError, match="known topics"):
        t.topic_by_name("nope")


@dataclass
class _Seq(IdlStruct, typename="autoglm.test.Seq"):
    i: int


def test_stream_profile_keeps_backdated_samples_that_source_ordering_drops():
    """Why STREAM orders by reception: with by-source-timestamp ordering Cyclone drops a
    sample whose source time is older than one already accepted (clock step, 2 writers)."""
    with ControlPlane(unique_instance("order"), "node") as plane:
        p = plane.participant
        now = time.time_ns()
        got = {}
        for label, profile_qos in (("stream", t.STREAM.writer_qos()),
                                   ("by-source", Qos(Policy.Reliability.Reliable(0),
                                                     Policy.History.KeepAll,
                                                     Policy.DestinationOrder.BySourceTimestamp))):
            topic = Topic(p, f"autoglm/test/{label}", _Seq)
            reader = DataReader(p, topic, qos=profile_qos)
            writer = DataWriter(p, topic, qos=profile_qos)
            writer.write(_Seq(1), timestamp=now)
            writer.write(_Seq(2), timestamp=now - 10**9)  # wall clock stepped back 1 s
            writer.write(_Seq(3), timestamp=now + 1)
            deadline = time.monotonic() + 2
            seen = []
            while len(seen) < 3 and time.monotonic() < deadline:
                seen += [s.i for s in reader.take(N=10)]
                time.sleep(0.01)
            got[label] = seen
        assert got["stream"] == [1, 2, 3]
        assert got["by-source"] == [1, 3]


def test_writer_rejects_wrong_type_and_stamps_header():
    with ControlPlane(unique_instance("type"), "stamper") as plane:
        w = plane.writer(t.REQUEST)
        r = plane.reader(t.REQUEST)
        with pytest.raises(TypeError, match="carries Request, not Cancel"):
            w.write(m.Cancel(request_id="x"))
        msg = m.Request(request_id="r1", extra=m.pack_extra({"stream": True}))
        before = time.monotonic_ns()
        w.write(msg)
        got = r.take(timeout=2.0)
        assert len(got) == 1 and got[0].source == "stamper"
        assert before <= got[0].t_mono_ns <= time.monotonic_ns()
        assert m.unpack_extra(got[0].extra) == {"stream": True}
        assert m.to_dict(got[0])["prompt"] == {"channel": "", "slot": 0, "generation": 0,
                                               "nbytes": 0}


def test_request_publisher_routes_by_modality():
    """Every request reaches the request topic; one with images or audio also reaches that
    modality's topic, once, with the same stamp; a text request reaches no perception topic."""
    from control.requests import RequestPublisher

    with ControlPlane(unique_instance("route"), "gateway") as plane, \
            ControlPlane(plane.instance, "stages") as other:
        pub = RequestPublisher(plane)
        readers = {"all": other.reader(t.REQUEST),
                   "image": other.reader(t.REQUEST_BY_MODALITY["image"]),
                   "audio": other.reader(t.REQUEST_BY_MODALITY["audio"])}
        assert pub.wait_for_readers(3, timeout=10)
        pub.write(m.Request(request_id="text"))
        pub.write(m.Request(request_id="img", modalities=["image", "image"]))
        pub.write(m.Request(request_id="both", modalities=["audio", "image"]))
        got = {k: [] for k in readers}
        deadline = time.monotonic() + 5
        while len(got["all"]) < 3 and time.monotonic() < deadline:
            for k, r in readers.items():
                got[k] += r.take(timeout=0.05)
        time.sleep(0.2)  # anything misrouted would have arrived by now
        for k, r in readers.items():
            got[k] += r.take(timeout=0)
        assert [g.request_id for g in got["all"]] == ["text", "img", "both"]
        assert [g.request_id for g in got["image"]] == ["img", "both"]
        assert [g.request_id for g in got["audio"]] == ["both"]
        stamp = {g.request_id: g.t_mono_ns for g in got["all"]}
        assert all(g.t_mono_ns == stamp[g.request_id] for g in got["image"] + got["audio"])


def test_plane_used_after_close_or_in_forked_child_raises():
    plane = ControlPlane(unique_instance("fork"), "node")
    w = plane.writer(t.CANCEL)
    pid = os.fork()
    if pid == 0:  # child: must refuse instead of sharing the parent's participant
        try:
            w.write(m.Cancel(request_id="x"))
            os._exit(1)
        except ControlPlaneError as exc:
            os._exit(0 if "create the ControlPlane in the child" in str(exc) else 2)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    plane.close()
    plane.close()  # idempotent
    with pytest.raises(ControlPlaneError, match="closed"):
        w.write(m.Cancel(request_id="x"))


def test_blocked_take_returns_when_plane_closes():
    plane = ControlPlane(unique_instance("wake"), "node")
    r = plane.reader(t.CANCEL)
    out = []
    th = threading.Thread(target=lambda: out.append(r.take(timeout=None)))
    th.start()
    time.sleep(0.2)
    plane.close()
    th.join(timeout=5)
    assert not th.is_alive() and out == [[]]


def test_reader_set_wakes_on_any_of_its_readers():
    with ControlPlane(unique_instance("rset"), "node") as plane, \
            ControlPlane(plane.instance, "other") as other:
        readers = [plane.reader(t.REQUEST), plane.reader(t.CANCEL)]
        inbox = ReaderSet(plane, readers)
        w_cancel = other.writer(t.CANCEL)
        assert readers[1].wait_for_writers(1, timeout=10)
        assert inbox.wait(0.05) is False  # nothing there: the timeout ends it
        woke = []
        th = threading.Thread(target=lambda: woke.append(inbox.wait(60.0)))
        th.start()
        time.sleep(0.2)
        w_cancel.write(m.Cancel(request_id="c1"))  # on the second reader
        th.join(timeout=30)  # far below the 60 s wait: the message woke it
        assert not th.is_alive() and woke == [True]
        assert [c.request_id for c in readers[1].take(timeout=1.0)] == ["c1"]
        with pytest.raises(ControlPlaneError, match="another plane"):
            ReaderSet(plane, [other.reader(t.REQUEST)])


def test_reader_set_says_which_readers_hold_a_message():
    with ControlPlane(unique_instance("rsetpoll"), "node") as plane, \
            ControlPlane(plane.instance, "other") as other:
        readers = [plane.reader(t.REQUEST), plane.reader(t.CANCEL)]
        inbox = ReaderSet(plane, readers)
        w_request, w_cancel = other.writer(t.REQUEST), other.writer(t.CANCEL)
        assert readers[0].wait_for_writers(1, 10) and readers[1].wait_for_writers(1, 10)
        assert inbox.ready() == []
        for w, msg, r in ((w_cancel, m.Cancel(request_id="c1"), readers[1]),
                          (w_request, m.Request(request_id="r1"), readers[0])):
            w.write(msg)
            deadline = time.monotonic() + 10
            while not inbox.ready():
                assert time.monotonic() < deadline, "the message never showed"
                time.sleep(0.01)
            assert inbox.ready() == [r]                # only the reader that holds it
            assert [x.request_id for x in r.take(0)] == [msg.request_id]
            assert inbox.ready() == []                 # taken: nothing left
        # Samples taken from DDS but not handed out yet count too.
        w_cancel.write(m.Cancel(request_id="c2"))
        w_cancel.write(m.Cancel(request_id="c3"))
        deadline = time.monotonic() + 10
        while len(readers[1]._dr.read(N=10)) < 2:      # both delivered (read leaves them)
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert [x.request_id for x in readers[1].take(0, max_samples=1)] == ["c2"]
        assert inbox.ready() == [readers[1]]           # c3 waits in the reader's hands
        assert [x.request_id for x in readers[1].take(0)] == ["c3"]
        assert inbox.ready() == []
        # take_ready() after a wait() takes from the readers that ended the wait; a message
        # that came since, on another reader, is taken at the next call.
        w_cancel.write(m.Cancel(request_id="c4"))
        assert inbox.wait(10.0) is True
        w_request.write(m.Request(request_id="r4"))
        deadline = time.monotonic() + 10
        while not readers[0]._dr.read(N=1):
            assert time.monotonic() < deadline
            time.sleep(0.01)

        def ids(taken):
            return [(r, [x.request_id for x in msgs]) for r, msgs in taken]
        assert ids(inbox.take_ready()) == [(readers[1], ["c4"])]
        assert ids(inbox.take_ready()) == [(readers[0], ["r4"])]
        assert inbox.take_ready() == []
    with pytest.raises(ControlPlaneError, match="closed"):
        inbox.ready()


def test_a_watched_reader_set_takes_what_arrives_without_asking_dds_in_between():
    with ControlPlane(unique_instance("rsetwatch"), "node") as plane, \
            ControlPlane(plane.instance, "other") as other:
        readers = [plane.reader(t.REQUEST), plane.reader(t.CANCEL)]
        inbox = ReaderSet(plane, readers, watched=True)
        watcher = inbox._watcher
        w_request, w_cancel = other.writer(t.REQUEST), other.writer(t.CANCEL)
        assert readers[0].wait_for_writers(1, 10) and readers[1].wait_for_writers(1, 10)
        assert inbox.take_ready() == []            # the first call looks in DDS itself
        assert not watcher.armed and watcher.arrived
        assert inbox.take_ready() == []            # the second arms the watcher
        assert watcher.armed and watcher.arrived is False   # and then trusts it

        def take_within(seconds: float):
            deadline = time.monotonic() + seconds
            while not (got := inbox.take_ready()):
                assert time.monotonic() < deadline, "the message never showed"
                time.sleep(0.005)
            return got

        for round_ in range(3):   # the watcher sleeps again after each take
            w_cancel.write(m.Cancel(request_id=f"c{round_}"))
            got = take_within(10)
            assert [(r, [x.request_id for x in msgs]) for r, msgs in got] == \
                [(readers[1], [f"c{round_}"])]
            assert inbox.take_ready() == []
        # Two readers at once, in the set's order.
        w_cancel.write(m.Cancel(request_id="c9"))
        w_request.write(m.Request(request_id="r9"))
        seen: dict = {}
        deadline = time.monotonic() + 10
        while len(seen) < 2:
            assert time.monotonic() < deadline
            for r, msgs in inbox.take_ready():
                seen.setdefault(r, []).extend(x.request_id for x in msgs)
            time.sleep(0.005)
        assert seen == {readers[0]: ["r9"], readers[1]: ["c9"]}
        # An idle wait() disarms the watcher: the loop alone sleeps in DDS, and looks itself.
        assert watcher.armed
        assert inbox.wait(0.01) is False
        assert not watcher.armed and watcher.arrived
        w_request.write(m.Request(request_id="r10"))
        assert inbox.wait(10.0) is True
        assert [x.request_id for _, msgs in inbox.take_ready() for x in msgs] == ["r10"]
        assert not watcher.armed                   # one look after a wait: not stepping yet
        for round_ in range(2):   # armed again by two looks in a row, and it still works
            assert inbox.take_ready() == [] and watcher.armed
            assert inbox.take_ready() == []
            # The disarm's bell was reset: armed and with nothing there, the watcher sleeps
            # (it does not wake again and again, raising the flag for nothing).
            time.sleep(0.05)
            assert watcher.arrived is False
            w_cancel.write(m.Cancel(request_id=f"d{round_}"))
            assert [x.request_id for _, msgs in take_within(10) for x in msgs] == [f"d{round_}"]
            assert inbox.wait(0.01) is False and not watcher.armed
            # Disarming a parked watcher leaves its bell alone: nothing to reset at the next arm.
            assert inbox.wait(0.01) is False and watcher._bell.read() is False
            assert inbox.take_ready() == [] and not watcher.armed
        thread = watcher._thread
        inbox.close()
        thread.join(timeout=5)
        assert not thread.is_alive()
    # Closing the set after its plane: the watcher has stopped, nothing is left waiting.
    with ControlPlane(unique_instance("rsetwatch2"), "node") as plane:
        inbox = ReaderSet(plane, [plane.reader(t.REQUEST)], watched=True)
        thread = inbox._watcher._thread
    t0 = time.monotonic()
    inbox.close()
    thread.join(timeout=5)
    assert not thread.is_alive() and time.monotonic() - t0 < 5


def test_a_watched_reader_set_loses_no_message_across_arming_and_disarming():
    """Messages written at random moments while the loop alternates between stepping (looks
    in a row: armed) and idle waits (disarmed): every one is taken, once."""
    import random

    rng = random.Random(7)
    with ControlPlane(unique_instance("rsetrace"), "node") as plane, \
            ControlPlane(plane.instance, "other") as other:
        reader = plane.reader(t.CANCEL)
        inbox = ReaderSet(plane, [reader], watched=True)
        w_cancel = other.writer(t.CANCEL)
        assert reader.wait_for_writers(1, 10)
        n = 300
        sent = [f"c{i}" for i in range(n)]

        def write_all():
            for rid in sent:
                w_cancel.write(m.Cancel(request_id=rid))
                time.sleep(rng.choice((0, 0, 0.0002, 0.001)))

        writer = threading.Thread(target=write_all)
        writer.start()
        got: list[str] = []
        deadline = time.monotonic() + 60
        while len(got) < n:
            assert time.monotonic() < deadline, f"{n - len(got)} messages never taken"
            for _ in range(rng.randint(1, 6)):       # stepping: looks in a row
                got += [x.request_id for _, msgs in inbox.take_ready() for x in msgs]
                time.sleep(rng.choice((0, 0.0003)))
            if rng.random() < 0.5:
                inbox.wait(0.002)                   # idle for a moment: disarmed
        writer.join()
        assert got == sent
        # Stepping only, never waiting: the watcher alone must say when each one came.
        sent = [f"s{i}" for i in range(100)]
        writer = threading.Thread(target=write_all)
        writer.start()
        got = []
        deadline = time.monotonic() + 60
        while len(got) < len(sent):
            assert time.monotonic() < deadline, f"{len(sent) - len(got)} messages never taken"
            got += [x.request_id for _, msgs in inbox.take_ready() for x in msgs]
            time.sleep(0.0001)
        writer.join()
        assert got == sent and inbox._watcher.armed
        inbox.close()


def test_a_reader_without_own_writes_gets_only_the_other_planes_samples():
    with ControlPlane(unique_instance("own"), "node") as plane, \
            ControlPlane(plane.instance, "other") as other:
        mine, everything = plane.reader(t.STAGE_EVENT, own_writes=False), plane.reader(t.STAGE_EVENT)
        w_mine, w_other = plane.writer(t.STAGE_EVENT), other.writer(t.STAGE_EVENT)
        assert everything.wait_for_writers(2, timeout=10) and mine.wait_for_writers(1, timeout=10)
        w_mine.write(m.StageEvent(request_id="own", kind="done"))
        w_other.write(m.StageEvent(request_id="theirs", kind="done"))
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            got += [e.request_id for e in everything.take(timeout=0.5)]
        assert sorted(got) == ["own", "theirs"]                # the default: both
        assert [e.request_id for e in mine.take(timeout=1.0)] == ["theirs"]
        assert mine.take(timeout=0.3) == []


def test_async_reader_delivers_in_order_without_blocking_the_loop():
    instance = unique_instance("aio")

    async def main():
        with ControlPlane(instance, "gateway") as gw, ControlPlane(instance, "stage") as stage:
            events = AsyncReader(gw.reader(t.STAGE_EVENT))
            writer = stage.writer(t.STAGE_EVENT)
            async with events:
                assert writer.wait_for_readers(1, timeout=5)
                ticks = 0

                async def ticker():  # proves the loop keeps running while we wait
                    nonlocal ticks
                    while True:
                        await asyncio.sleep(0.01)
                        ticks += 1

                tick_task = asyncio.create_task(ticker())
                await asyncio.sleep(0.1)
                for i in range(50):
                    writer.write(m.StageEvent(request_id=f"r{i}", kind=m.EventKinds.DONE))
                got = [await events.get(timeout=5) for _ in range(50)]
                tick_task.cancel()
                with pytest.raises(asyncio.TimeoutError):
                    await events.get(timeout=0.2)
            return [e.request_id for e in got], ticks

    ids, ticks = asyncio.run(main())
    assert ids == [f"r{i}" for i in range(50)]
    assert ticks >= 5


def test_echo_reads_state_history_and_stream_as_dicts():
    instance = unique_instance("echo")
    with ControlPlane(instance, "stage") as stage, ControlPlane(instance, "tool") as tool:
        stage.writer(t.STAGE_STATE).write(m.StageState(stage="audio", state="busy", pid=42))
        records = list(echo(tool, "lifecycle/state", max_messages=1, duration_s=5))
        assert [(r["stage"], r["state"], r["pid"], r["source"]) for r in records] == [
            ("audio", "busy", 42, "stage")]
        assert format_record(records[0]).startswith('{"stage":"audio"')

        traces = stage.writer(t.TRACE_SPAN)

        def produce():  # echo creates its reader on the first next(); wait for it
            assert traces.wait_for_readers(1, timeout=5)
            for i in range(3):
                traces.write(m.TraceSpan(request_id=f"r{i}", name="prefill"))

        th = threading.Thread(target=produce)
        th.start()
        spans = list(echo(tool, t.TRACE_SPAN, max_messages=3, duration_s=5, receive_time=True))
        th.join()
        assert [r["request_id"] for r in spans] == ["r0", "r1", "r2"]
        assert all(r["_rx_mono_ns"] >= r["t_mono_ns"] > 0 for r in spans)

"""Publishing a generation request: on the request topic (the decision stage reads every
request) and on the topic of each modality it carries (control.topics.REQUEST_BY_MODALITY),
so a perception stage reads only the requests it has work in. Before the split, every text
request woke the vision and the audio process too (a DDS delivery and a deserialisation
each), on cores the gateway and the decision stage share with them."""
from __future__ import annotations

from . import topics as t
from .plane import ControlPlane, _poll


class RequestPublisher:
    """The writers a request goes out on; ``write`` stamps it once for all of them."""

    def __init__(self, plane: ControlPlane) -> None:
        self._all = plane.writer(t.REQUEST)
        self._by_modality = {m: plane.writer(spec) for m, spec in t.REQUEST_BY_MODALITY.items()}

    def write(self, msg) -> None:
        # Perception first: its work is the longer one; the decision stage only waits for it.
        mods = [m for m in dict.fromkeys(msg.modalities) if m in self._by_modality]
        stamp = True
        for m in mods:
            self._by_modality[m].write(msg, stamp=stamp)
            stamp = False
        self._all.write(msg, stamp=stamp)

    @property
    def matched_readers(self) -> int:
        """Readers over all request topics (a stage reads exactly one of them)."""
        return self._all.matched_readers + sum(w.matched_readers
                                                for w in self._by_modality.values())

    def wait_for_readers(self, count: int = 1, timeout: float = 5.0) -> bool:
        return _poll(lambda: self.matched_readers >= count, timeout)

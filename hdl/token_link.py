"""The dependency tokens between two neighbouring units."""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from mvu.hdl.interfaces import TokenPort

__all__ = ["TokenLink"]


class TokenLink(wiring.Component):
    """Counts the tokens each of two neighbouring units has given the other and not yet had taken.

    ``prev`` is the earlier unit's port in the chain load -> compute -> store,
    ``next`` the later one's. ``clear`` forgets every token (a run starts). A
    count wraps at 256: programs keep fewer tokens outstanding.
    """

    prev: In(TokenPort())
    next: In(TokenPort())
    clear: In(1)

    def elaborate(self, platform):
        m = Module()
        for giver, taker, name in ((self.prev, self.next, "forward"), (self.next, self.prev, "backward")):
            count = Signal(8, name=f"{name}_tokens")
            m.d.sync += count.eq(count + giver.push - taker.pop)
            with m.If(self.clear):
                m.d.sync += count.eq(0)
            m.d.comb += taker.avail.eq(count != 0)
        return m

"""The compute unit: the preloader and the streamer around the matrix-vector datapath."""

from amaranth import Module, Mux
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out, flipped

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.interfaces import INSTRUCTIONS, TokenPort, buffer_read, buffer_write
from mvu.hdl.matvec import MatrixVectorUnit
from mvu.hdl.preloader import Preloader
from mvu.hdl.streamer import Streamer

__all__ = ["ComputeUnit"]


class ComputeUnit(wiring.Component):
    """Executes COMPUTE instructions on the matrix-vector datapath.

    Two engines work on consecutive instructions at once: the
    :class:`~mvu.hdl.preloader.Preloader` shifts the next instruction's weight
    tile into the array's shadow registers while the
    :class:`~mvu.hdl.streamer.Streamer` streams the current one's activations.
    The preloader takes the load unit's tokens (``prev_tokens``), the streamer
    gives them back and trades tokens with the store unit (``next_tokens``).

    ``idle``: no instruction held or in flight; ``active``: an activation
    entry entered the array; ``stall_token``: waiting for a token (the
    streamer's wait for a store token decides a cycle in which both engines
    wait); ``stall_weights``: the streamer has nothing to stream while a tile
    is preloaded.
    """

    def __init__(self, config: HardwareConfig):
        self.config = config
        R, C = config.rows, config.cols
        super().__init__({
            "instr": In(INSTRUCTIONS),
            "prev_tokens": Out(TokenPort()), "next_tokens": Out(TokenPort()),
            "act_read": Out(buffer_read(config.act_depth, 8 * R)),
            "wgt_read": Out(buffer_read(config.wgt_depth, 8 * C)),
            "acc_read": Out(buffer_read(config.acc_depth, 32 * C)),
            "acc_write": Out(buffer_write(config.acc_depth, 32 * C)),
            "idle": Out(1), "active": Out(1), "stall_token": Out(1), "stall_weights": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.matvec = matvec = MatrixVectorUnit(self.config)
        m.submodules.preloader = preloader = Preloader(self.config)
        m.submodules.streamer = streamer = Streamer(self.config, matvec.latency)

        wiring.connect(m, flipped(self.instr), preloader.instr)
        wiring.connect(m, preloader.handoff, streamer.handoff)
        wiring.connect(m, preloader.weights, matvec.weights)
        wiring.connect(m, streamer.acts, matvec.acts)
        wiring.connect(m, matvec.sums, streamer.sums)
        wiring.connect(m, preloader.wgt_read, flipped(self.wgt_read))
        for port in ("act_read", "acc_read", "acc_write", "next_tokens"):
            wiring.connect(m, getattr(streamer, port), flipped(getattr(self, port)))
        m.d.comb += [
            preloader.token_avail.eq(self.prev_tokens.avail),
            self.prev_tokens.pop.eq(preloader.token_pop),
            self.prev_tokens.push.eq(streamer.prev_push),
            self.idle.eq(preloader.idle & streamer.idle),
            self.active.eq(streamer.active),
            self.stall_token.eq(Mux(streamer.waiting, ~self.next_tokens.avail, preloader.stall_token)),
            self.stall_weights.eq(preloader.preloading & streamer.starved),
        ]
        return m

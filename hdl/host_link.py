"""The board's side of the host link (docs/host-link.md): request frames in, memory and CSR accesses, replies out."""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from mvu.hdl.contract.host_link import MAX_PAYLOAD, PROTOCOL_VERSION, REPLY, SYNC, Command, LinkStatus
from mvu.hdl.crc32 import RESIDUE, Crc32
from mvu.hdl.interfaces import READ_REQUEST, CsrBus, masked_write_beat
from mvu.hdl.uart import BYTES

__all__ = ["LinkMemory", "HostLink"]


class LinkMemory(wiring.Signature):
    """The host link's port on memory (``Out`` in the link); ``beat_bytes`` wide.

    Members:
        req: ``Out(stream.Signature(READ_REQUEST))``: reads, one beat each (``len`` 1).
        resp: ``In(stream.Signature(8 * beat_bytes, always_ready=True))``: the beats, in request order.
        write: ``Out(stream.Signature(masked_write_beat(beat_bytes)))``: writes of some bytes of one beat.
    """

    def __init__(self, beat_bytes: int):
        super().__init__({
            "req": Out(stream.Signature(READ_REQUEST)),
            "resp": In(stream.Signature(8 * beat_bytes, always_ready=True)),
            "write": Out(stream.Signature(masked_write_beat(beat_bytes))),
        })


class HostLink(wiring.Component):
    """Answers the host's request frames from ``rx`` with reply frames on ``tx``.

    A frame is taken whole (its payload into a ``MAX_PAYLOAD``-byte buffer) and its CRC checked before
    anything is carried out: a damaged frame changes nothing and gets a ``BAD_CRC`` reply with command
    ``0x80``, as does a length over ``MAX_PAYLOAD``, which no host sends (the receiver then looks for the
    next sync mark). WRITE and READ reach ``memory_bytes`` of memory on ``mem``, CSR_WRITE and CSR_READ the
    core's registers on ``csr``. A request that repeats the last request's sequence number is a retry: a
    WRITE or CSR_WRITE is not carried out again (its reply is sent again), a READ, CSR_READ or PING runs
    again. Bytes that arrive while a request is carried out or answered are dropped.

    Members:
        rx: ``In(BYTES)``: bytes from the host; always taken.
        tx: ``Out(BYTES)``: bytes to the host.
        mem: ``Out(LinkMemory(beat_bytes))``.
        csr: ``Out(CsrBus())``.
    """

    def __init__(self, beat_bytes: int, memory_bytes: int):
        if beat_bytes < 4 or beat_bytes & (beat_bytes - 1):
            raise ValueError(f"beat_bytes must be a power of two of at least 4, not {beat_bytes}")
        self.beat_bytes, self.memory_bytes = beat_bytes, memory_bytes
        super().__init__({"rx": In(BYTES), "tx": Out(BYTES), "mem": Out(LinkMemory(beat_bytes)), "csr": Out(CsrBus())})

    def elaborate(self, platform):
        m = Module()
        B, lane_bits = self.beat_bytes, exact_log2(self.beat_bytes)
        rx, tx, mem, csr = self.rx, self.tx, self.mem, self.csr
        m.submodules.crc = crc = Crc32()
        m.submodules.buffer = buffer = Memory(shape=8, depth=MAX_PAYLOAD, init=[])
        buffer_write, buffer_read = buffer.write_port(), buffer.read_port()

        header = Signal(data.StructLayout({"seq": 8, "cmd": 8, "length": 16}))
        args = Signal(data.StructLayout({"addr": 32, "count": 16}))  # the payload's first six bytes
        args_bits = args.as_value()  # also CSR_WRITE: index, value; CSR_READ: index, count
        count = Signal(range(MAX_PAYLOAD + 1))  # bytes of the current field (header, payload, CRC, buffer)
        left = Signal(range(MAX_PAYLOAD + 1))  # bytes still to write to memory or to send after the status
        cursor = Signal(max(ceil_log2(self.memory_bytes), 10))  # memory address, or byte of the reply's data
        beat = Signal(8 * B)  # bytes on their way to memory or to the host
        mask = Signal(B)
        have_beat, pending = Signal(), Signal()
        status = Signal(range(len(LinkStatus)))
        last_seq, seen = Signal(8), Signal()

        byte, got = rx.payload, rx.valid
        is_read = header.cmd == Command.READ
        lane = Mux(is_read, cursor[:lane_bits], cursor[:2])
        last_lane = Mux(is_read, cursor[:lane_bits] == B - 1, cursor[:2] == 3)
        m.d.comb += [
            rx.ready.eq(1),
            crc.data.eq(Mux(tx.valid, tx.payload, byte)),
            buffer_write.addr.eq(count), buffer_write.data.eq(byte),
            buffer_read.addr.eq(count),
            csr.addr.eq(args_bits[:8] + cursor[2:]),
            csr.wdata.eq(args_bits[8:40]),
            mem.req.p.addr.eq(Cat(Const(0, lane_bits), cursor[lane_bits:])),
            mem.req.p.len.eq(1),
            mem.write.p.data.eq(beat),
            mem.write.p.addr.eq(Cat(Const(0, lane_bits), cursor[lane_bits:])),
            mem.write.p.mask.eq(mask),
        ]
        with m.If(mem.resp.valid):
            m.d.sync += [beat.eq(mem.resp.payload), have_beat.eq(1), pending.eq(0)]

        with m.FSM():
            # Receiving a request.
            with m.State("SYNC"):
                with m.If(got & (byte == SYNC[0])):
                    m.next = "SYNC2"
            with m.State("SYNC2"):
                with m.If(got):
                    with m.If(byte == SYNC[1]):
                        m.d.sync += count.eq(0)
                        m.next = "HEADER"
                    with m.Elif(byte != SYNC[0]):
                        m.next = "SYNC"
            with m.State("HEADER"):
                with m.If(got):
                    new_length = Cat(header.length[:8], byte)
                    m.d.comb += [crc.valid.eq(1), crc.clear.eq(count == 0)]
                    m.d.sync += [header.as_value().word_select(count[:2], 8).eq(byte), count.eq(count + 1)]
                    with m.If(count == 3):
                        m.d.sync += count.eq(0)
                        with m.If(new_length > MAX_PAYLOAD):
                            m.d.sync += [status.eq(LinkStatus.BAD_CRC), left.eq(0)]
                            m.next = "REPLY"
                        with m.Elif(new_length == 0):
                            m.next = "CHECKSUM"
                        with m.Else():
                            m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                with m.If(got):
                    m.d.comb += [crc.valid.eq(1), buffer_write.en.eq(1)]
                    m.d.sync += count.eq(count + 1)
                    with m.If(count < 6):
                        m.d.sync += args_bits.word_select(count[:3], 8).eq(byte)
                    with m.If(count == header.length - 1):
                        m.d.sync += count.eq(0)
                        m.next = "CHECKSUM"
            with m.State("CHECKSUM"):
                with m.If(got):
                    m.d.comb += crc.valid.eq(1)
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == 3):
                        m.next = "CHECK"
            with m.State("CHECK"):
                m.d.sync += [count.eq(0), left.eq(0), cursor.eq(0)]
                with m.If(crc.crc == RESIDUE):
                    m.next = "EXECUTE"
                with m.Else():
                    m.d.sync += status.eq(LinkStatus.BAD_CRC)
                    m.next = "REPLY"

            # Carrying it out.
            with m.State("EXECUTE"):
                check = Signal(range(len(LinkStatus)))
                end = Signal(33)
                length = header.length
                m.d.comb += end.eq(args.addr + Mux(is_read, args.count, length - 4))
                out_of_range = end > self.memory_bytes
                with m.Switch(header.cmd):
                    with m.Case(Command.PING):
                        m.d.comb += check.eq(LinkStatus.OK)
                        m.d.sync += left.eq(3)
                    with m.Case(Command.WRITE):
                        m.d.comb += check.eq(Mux(length < 4, LinkStatus.BAD_LENGTH,
                                                 Mux(out_of_range, LinkStatus.OUT_OF_RANGE, LinkStatus.OK)))
                        m.d.sync += [left.eq(length - 4), cursor.eq(args.addr)]
                    with m.Case(Command.READ):
                        m.d.comb += check.eq(Mux((length != 6) | (args.count >= MAX_PAYLOAD), LinkStatus.BAD_LENGTH,
                                                 Mux(out_of_range, LinkStatus.OUT_OF_RANGE, LinkStatus.OK)))
                        m.d.sync += [left.eq(args.count), cursor.eq(args.addr)]
                    with m.Case(Command.CSR_WRITE):
                        m.d.comb += check.eq(Mux(length != 5, LinkStatus.BAD_LENGTH, LinkStatus.OK))
                    with m.Case(Command.CSR_READ):
                        m.d.comb += check.eq(Mux(length != 2, LinkStatus.BAD_LENGTH, LinkStatus.OK))
                        m.d.sync += left.eq(args_bits[8:16] << 2)
                    with m.Default():
                        m.d.comb += check.eq(LinkStatus.UNKNOWN_COMMAND)
                m.d.sync += [status.eq(check), last_seq.eq(header.seq), seen.eq(1)]
                retry = seen & (last_seq == header.seq)
                with m.If(check != LinkStatus.OK):
                    m.d.sync += left.eq(0)
                    m.next = "REPLY"
                with m.Elif(retry & ((header.cmd == Command.WRITE) | (header.cmd == Command.CSR_WRITE))):
                    m.d.sync += left.eq(0)
                    m.next = "REPLY"
                with m.Elif((header.cmd == Command.WRITE) & (length != 4)):
                    m.d.sync += count.eq(4)  # the first byte after the address
                    m.next = "WRITE_FETCH"
                with m.Elif(header.cmd == Command.CSR_WRITE):
                    m.next = "CSR_WRITE"
                with m.Else():
                    m.next = "REPLY"
            with m.State("WRITE_FETCH"):  # the buffer's byte at count comes out in the next cycle
                m.next = "WRITE_PUT"
            with m.State("WRITE_PUT"):
                write_lane = cursor[:lane_bits]
                m.d.sync += [beat.word_select(write_lane, 8).eq(buffer_read.data),
                             mask.bit_select(write_lane, 1).eq(1), count.eq(count + 1), left.eq(left - 1)]
                with m.If((write_lane == B - 1) | (left == 1)):
                    m.next = "WRITE_FLUSH"
                with m.Else():
                    m.d.sync += cursor.eq(cursor + 1)
                    m.next = "WRITE_FETCH"
            with m.State("WRITE_FLUSH"):
                m.d.comb += mem.write.valid.eq(1)
                with m.If(mem.write.ready):
                    m.d.sync += [mask.eq(0), cursor.eq(cursor + 1)]
                    with m.If(left == 0):
                        m.d.sync += count.eq(0)
                        m.next = "REPLY"
                    with m.Else():
                        m.next = "WRITE_FETCH"
            with m.State("CSR_WRITE"):
                m.d.comb += csr.we.eq(1)
                m.next = "REPLY"

            # Answering it.
            with m.State("REPLY"):
                reply_length = left + 1
                fields = [SYNC[0], SYNC[1], header.seq, Mux(status == LinkStatus.BAD_CRC, 0, header.cmd) | REPLY,
                          reply_length[:8], reply_length[8:], status]
                m.d.comb += tx.valid.eq(1)
                with m.Switch(count):
                    for index, value in enumerate(fields):
                        with m.Case(index):
                            m.d.comb += tx.payload.eq(value)
                with m.If(tx.ready):
                    m.d.comb += [crc.valid.eq(count >= 2), crc.clear.eq(count == 2)]
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == len(fields) - 1):
                        m.d.sync += count.eq(0)
                        m.next = "REPLY_DATA"
            with m.State("REPLY_DATA"):
                with m.If(left == 0):
                    m.next = "REPLY_CRC"
                with m.Elif(~have_beat):
                    with m.Switch(header.cmd):
                        with m.Case(Command.READ):
                            m.d.comb += mem.req.valid.eq(~pending)
                            with m.If(mem.req.ready & ~pending):
                                m.d.sync += pending.eq(1)
                        with m.Case(Command.CSR_READ):
                            m.d.sync += [beat.eq(csr.rdata), have_beat.eq(1)]
                        with m.Default():  # PING
                            m.d.sync += [beat.eq(PROTOCOL_VERSION | MAX_PAYLOAD << 8), have_beat.eq(1)]
                with m.Else():
                    m.d.comb += [tx.valid.eq(1), tx.payload.eq(beat.word_select(lane, 8))]
                    with m.If(tx.ready):
                        m.d.comb += crc.valid.eq(1)
                        m.d.sync += [cursor.eq(cursor + 1), left.eq(left - 1)]
                        with m.If(last_lane | (left == 1)):
                            m.d.sync += have_beat.eq(0)
            with m.State("REPLY_CRC"):
                m.d.comb += [tx.valid.eq(1), tx.payload.eq(crc.crc.word_select(count[:2], 8))]
                with m.If(tx.ready):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == 3):
                        m.next = "SYNC"
        return m

// Verilator harness for MvuCore: the clock, a model of external memory, and a
// C ABI that Python calls through ctypes. A whole program runs inside one
// call to mvu_sim_run(), so no Python runs per cycle.
//
// Memory model: read requests are accepted while fewer than `max_outstanding`
// are pending; each one's beats become available `latency` cycles after it
// was accepted and return in order. Reads and writes share one bandwidth
// budget of `bytes_per_cycle`, kept as a token bucket.
//
// The core's memory port is three streams (mvu.hdl.interfaces.MemoryBus) whose
// payloads are structs, first field in the lowest bits: a read request is
// addr (32 bits), len (16), id (2); a read beat is data (one beat), id (2); a
// write is data (one beat), addr (32).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <deque>
#include <vector>

#include "Vmvu_core.h"
#include "verilated.h"

#ifndef MVU_MEM_BYTES
#error "MVU_MEM_BYTES must be defined"
#endif

namespace {

constexpr uint32_t kBeat = MVU_MEM_BYTES;

struct PendingRead {
    uint64_t ready_cycle;
    uint64_t addr;
    uint32_t beats_left;
    uint8_t id;
};

struct Sim {
    VerilatedContext context;
    Vmvu_core* top;
    std::vector<uint8_t> memory;
    std::deque<PendingRead> reads;
    uint64_t cycle = 0;
    uint32_t latency = 1;
    uint32_t max_outstanding = 64;
    double bytes_per_cycle = kBeat;
    double credit = 0;
    int memory_error = 0;  // 1: read out of range, 2: write out of range
    uint64_t error_addr = 0;
};

// A beat's data fills a payload's lowest kBeat bytes; the field after it starts at byte kBeat.
template <typename T>
void put_beat(T& payload, const uint8_t* data, uint32_t id) {
    static_assert(sizeof(T) >= kBeat + sizeof id, "the payload holds a beat and a 32-bit word");
    auto* bytes = reinterpret_cast<uint8_t*>(&payload);
    std::memcpy(bytes, data, kBeat);
    std::memcpy(bytes + kBeat, &id, sizeof id);
}

template <typename T>
uint32_t get_beat(uint8_t* data, const T& payload) {
    static_assert(sizeof(T) >= kBeat + sizeof(uint32_t), "the payload holds a beat and a 32-bit word");
    const auto* bytes = reinterpret_cast<const uint8_t*>(&payload);
    uint32_t addr;
    std::memcpy(data, bytes, kBeat);
    std::memcpy(&addr, bytes + kBeat, sizeof addr);
    return addr;
}

// One clock cycle. The core's memory-port outputs depend only on its state
// (no combinational path from inputs), so they are read before the inputs
// for this cycle are set, and one evaluation per edge suffices.
void step(Sim* s) {
    Vmvu_core* top = s->top;
    s->credit = std::min(s->credit + s->bytes_per_cycle, 2.0 * kBeat + s->bytes_per_cycle);
    bool respond = false;
    if (!s->reads.empty() && s->reads.front().ready_cycle <= s->cycle && s->credit >= kBeat) {
        PendingRead& head = s->reads.front();
        put_beat(top->mem_resp_payload, &s->memory[head.addr], head.id);
        respond = true;
    }
    top->mem_resp_valid = respond;
    const bool read_ready = s->reads.size() < s->max_outstanding;
    top->mem_req_ready = read_ready;
    const bool write_ready = s->credit - (respond ? kBeat : 0) >= kBeat;
    top->mem_write_ready = write_ready;

    if (top->mem_req_valid && read_ready) {
        const uint64_t request = top->mem_req_payload;
        const uint64_t addr = uint32_t(request);
        const uint32_t beats = uint16_t(request >> 32);
        if (beats == 0 || addr + uint64_t(beats) * kBeat > s->memory.size()) {
            s->memory_error = 1;
            s->error_addr = addr;
        } else {
            s->reads.push_back({s->cycle + s->latency, addr, beats, uint8_t(request >> 48)});
        }
    }
    if (top->mem_write_valid && write_ready) {
        uint8_t data[kBeat];
        const uint64_t addr = get_beat(data, top->mem_write_payload);
        if (addr + kBeat > s->memory.size()) {
            s->memory_error = 2;
            s->error_addr = addr;
        } else {
            std::memcpy(&s->memory[addr], data, kBeat);
        }
        s->credit -= kBeat;
    }
    if (respond) {
        s->credit -= kBeat;
        PendingRead& head = s->reads.front();
        head.addr += kBeat;
        if (--head.beats_left == 0) s->reads.pop_front();
    }
    top->clk = 1;
    top->eval();
    top->clk = 0;
    top->eval();
    ++s->cycle;
}

}  // namespace

extern "C" {

void* mvu_sim_create(uint32_t latency, double bytes_per_cycle, uint32_t max_outstanding) {
    Sim* s = new Sim();
    s->top = new Vmvu_core(&s->context, "mvu_core");
    s->latency = std::max<uint32_t>(latency, 1);
    s->bytes_per_cycle = bytes_per_cycle;
    s->max_outstanding = std::max<uint32_t>(max_outstanding, 1);
    return s;
}

void mvu_sim_destroy(void* handle) {
    Sim* s = static_cast<Sim*>(handle);
    s->top->final();
    delete s->top;
    delete s;
}

uint8_t* mvu_sim_memory(void* handle, uint64_t size) {
    Sim* s = static_cast<Sim*>(handle);
    s->memory.assign(size, 0);
    return s->memory.data();
}

void mvu_sim_reset(void* handle) {
    Sim* s = static_cast<Sim*>(handle);
    s->top->csr_we = 0;
    s->top->rst = 1;
    for (int i = 0; i < 4; ++i) step(s);
    s->top->rst = 0;
    // Whatever the core asked of memory before the reset took effect is forgotten.
    s->reads.clear();
    s->memory_error = 0;
    s->credit = 0;
}

uint32_t mvu_sim_csr_read(void* handle, uint32_t addr) {
    Sim* s = static_cast<Sim*>(handle);
    s->top->csr_addr = addr;
    s->top->csr_we = 0;
    s->top->eval();
    return s->top->csr_rdata;
}

void mvu_sim_csr_write(void* handle, uint32_t addr, uint32_t data) {
    Sim* s = static_cast<Sim*>(handle);
    s->top->csr_addr = addr;
    s->top->csr_wdata = data;
    s->top->csr_we = 1;
    step(s);
    s->top->csr_we = 0;
}

// Runs until the core stops. Returns 0 when done, 1 on a core error, 2 when
// max_cycles passed first, 3 on a memory access out of range.
int mvu_sim_run(void* handle, uint64_t max_cycles, uint64_t* cycles_used) {
    Sim* s = static_cast<Sim*>(handle);
    const uint64_t start = s->cycle;
    int result = 2;
    while (s->cycle - start < max_cycles) {
        step(s);
        if (s->memory_error) { result = 3; break; }
        if (!s->top->busy) { result = s->top->error ? 1 : 0; break; }
    }
    *cycles_used = s->cycle - start;
    return result;
}

uint64_t mvu_sim_memory_error(void* handle, int* kind) {
    Sim* s = static_cast<Sim*>(handle);
    *kind = s->memory_error;
    return s->error_addr;
}

}  // extern "C"

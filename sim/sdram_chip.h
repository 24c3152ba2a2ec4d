// A behavioural 16-bit SDR SDRAM chip for the whole-board simulation (sim/board_harness.cpp): it stores the
// data, drives READ data CAS latency cycles after the command, and checks every timing rule it can see, in ns
// against the controller's SdramTiming (not against the controller's cycle counts), as
// sim/benches/sdram_model.py does for the controller's bench. A breach prints the cycle, the command and the
// rule on stderr and exits with status 3: the power-up wait and the initialisation order (PRECHARGE all,
// auto refreshes, MODE before any ACTIVE), tRCD, tRP, tRAS (and its maximum), tRC, tRRD, tWR, tRFC, tMRD, the
// refresh interval, ACTIVE to an open bank, READ/WRITE to a closed bank, a burst cut short, write data not
// driven, dq driven by both sides, and commands the model does not have (BURST_STOP, auto precharge, modes
// other than sequential bursts of 1 to 8 with CAS latency 2 or 3 and burst writes).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace sdram {

// The chip's rules in ns (mvu.hdl.sdram_controller.SdramTiming).
struct Timing {
    double t_rp, t_rcd, t_ras, t_ras_max, t_rc, t_rrd, t_wr;
    int t_wr_cycles;
    double t_rfc;
    int t_mrd_cycles;
    double t_refi, t_init;
    int init_refreshes;
};

// The chip's organisation (mvu.hdl.sdram_controller.SdramGeometry); word address = row : bank : column.
struct Geometry {
    int row_bits, col_bits, bank_bits;
};

// The pins in one cycle, active high as amaranth-boards' sdram resource presents them.
struct Pins {
    int clk_en, cs, ras, cas, we, ba, a, dq_o, dq_oe, dqm;
};

// Commands as (ras, cas, we).
enum Command { NOP, BURST_STOP, READ, WRITE, ACTIVE, PRECHARGE, REFRESH, MODE, COMMANDS };
inline const char* const NAMES[COMMANDS] = {"NOP", "BURST_STOP", "READ", "WRITE", "ACTIVE", "PRECHARGE", "REFRESH", "MODE"};

constexpr int64_t NEVER = -1000000000000LL;

class Chip {
  public:
    // A chip clocked every period_ns; unwritten words hold a pseudo-random pattern.
    Chip(const Timing& timing, const Geometry& geometry, double period_ns)
        : t_(timing), g_(geometry), period_(period_ns),
          words_(size_t(1) << (geometry.row_bits + geometry.bank_bits + geometry.col_bits)),
          banks_(size_t(1) << geometry.bank_bits) {
        uint64_t state = 0x9E3779B97F4A7C15ULL;
        for (auto& word : words_) {
            state = state * 6364136223846793005ULL + 1442695040888963407ULL;
            word = static_cast<uint16_t>(state >> 48);
        }
    }

    // The word the chip drives on dq in `cycle`, if any.
    bool output(int64_t cycle, uint16_t* word) const {
        const Slot& slot = scheduled_[cycle & (SLOTS - 1)];
        if (slot.cycle != cycle) return false;
        *word = slot.word;
        return true;
    }

    // The pins in `cycle`, sampled by the chip at its end.
    void clock(int64_t cycle, const Pins& pins) {
        if (start_ == NEVER) start_ = cycle;
        uint16_t ignored;
        if (pins.dq_oe && (output(cycle, &ignored) || output(cycle - 1, &ignored)))
            fail(cycle, "the controller drives dq while the chip drives it (or the cycle before)");
        check_refresh_and_rows(cycle);
        Command command = pins.cs ? static_cast<Command>((pins.ras << 2) | (pins.cas << 1) | pins.we) : NOP;
        if (command != NOP) issue(cycle, command, pins);
        take_write_data(cycle, pins);
    }

    // Commands seen, by Command.
    uint64_t counts[COMMANDS] = {};

  private:
    static constexpr int SLOTS = 16;  // more than CAS latency + the longest burst
    struct Slot {
        int64_t cycle = NEVER;
        uint16_t word = 0;
    };
    struct Bank {
        int row = -1;  // -1: no open row
        int64_t activated = NEVER, precharged = NEVER;
        int64_t write_end = NEVER;  // the cycle of the last write data
        int64_t read_end = NEVER;   // the first cycle after the last READ's burst
    };

    Timing t_;
    Geometry g_;
    double period_;
    std::vector<uint16_t> words_;
    std::vector<Bank> banks_;
    Slot scheduled_[SLOTS];
    int burst_length_ = 0, cas_latency_ = 0;  // 0: the mode register is not loaded
    int64_t mode_set_ = NEVER, last_refresh_ = NEVER, last_active_ = NEVER, start_ = NEVER;
    int64_t burst_until_ = NEVER;  // no READ/WRITE before this cycle without cutting a burst short
    int init_refreshes_ = 0;
    bool precharged_all_ = false;
    int write_bank_ = 0, write_row_ = 0, write_column_ = 0, write_left_ = 0;  // the write burst under way

    [[noreturn]] void fail(int64_t cycle, const std::string& what) const {
        fprintf(stderr, "board_sim: SDRAM cycle %lld: %s\n", static_cast<long long>(cycle), what.c_str());
        fflush(stderr);
        exit(3);
    }

    static std::string ns(double value) {
        char text[32];
        snprintf(text, sizeof(text), "%g", value);
        return text;
    }

    void after(int64_t cycle, int64_t event, double rule_ns, const std::string& what, const char* rule) const {
        double elapsed = static_cast<double>(cycle - event) * period_;
        if (elapsed < rule_ns - 1e-9) fail(cycle, what + ": " + rule + " is " + ns(rule_ns) + " ns, only " + ns(elapsed) + " ns passed");
    }

    size_t address(int bank, int row, int column) const {
        return (size_t(row) << (g_.bank_bits + g_.col_bits)) | (size_t(bank) << g_.col_bits) | size_t(column);
    }

    int burst_column(int column, int i) const {  // the i-th column of a sequential burst from `column`
        return (column & ~(burst_length_ - 1)) | ((column + i) & (burst_length_ - 1));
    }

    void check_refresh_and_rows(int64_t cycle) const {
        if (burst_length_ && static_cast<double>(cycle - last_refresh_) * period_ > t_.t_refi)
            fail(cycle, "no auto refresh for " + ns(static_cast<double>(cycle - last_refresh_) * period_) +
                            " ns; tREFI is " + ns(t_.t_refi) + " ns");
        for (size_t b = 0; b < banks_.size(); ++b)
            if (banks_[b].row >= 0 && static_cast<double>(cycle - banks_[b].activated) * period_ > t_.t_ras_max)
                fail(cycle, "bank " + std::to_string(b) + "'s row open longer than tRAS max " + ns(t_.t_ras_max) + " ns");
    }

    void issue(int64_t cycle, Command command, const Pins& pins) {
        std::string name = NAMES[command];
        ++counts[command];
        if (!pins.clk_en) fail(cycle, name + " with clock enable low");
        double since = static_cast<double>(cycle - start_) * period_;
        if (since < t_.t_init)
            fail(cycle, name + " " + ns(since) + " ns after power-up; the chip needs " + ns(t_.t_init) + " ns of NOPs first");
        bool all = (pins.a >> 10) & 1;
        if (!precharged_all_ && !(command == PRECHARGE && all))
            fail(cycle, name + " before the PRECHARGE of all banks that starts initialisation");
        if (mode_set_ != NEVER) after(cycle, mode_set_, t_.t_mrd_cycles * period_, name, "tMRD from MODE");
        switch (command) {
            case ACTIVE: active(cycle, pins.ba, pins.a); break;
            case READ: read(cycle, pins.ba, pins.a); break;
            case WRITE: write(cycle, pins.ba, pins.a); break;
            case PRECHARGE: precharge(cycle, pins.ba, all); break;
            case REFRESH: refresh(cycle); break;
            case MODE: mode(cycle, pins.a); break;
            default: fail(cycle, name + ": the model has no such command (the controller never needs it)");
        }
    }

    void take_write_data(int64_t cycle, const Pins& pins) {
        if (write_left_ == 0) {
            if (pins.dq_oe) fail(cycle, "the controller drives dq outside a write burst");
            return;
        }
        if (!pins.dq_oe)
            fail(cycle, "write data for bank " + std::to_string(write_bank_) + " row " + std::to_string(write_row_) +
                            " column " + std::to_string(write_column_) + " not driven");
        uint16_t& word = words_[address(write_bank_, write_row_, write_column_)];
        uint16_t keep = static_cast<uint16_t>(((pins.dqm & 1) ? 0x00FF : 0) | ((pins.dqm & 2) ? 0xFF00 : 0));
        word = static_cast<uint16_t>((word & keep) | (pins.dq_o & ~keep));
        write_column_ = burst_column(write_column_, 1);
        --write_left_;
    }

    void active(int64_t cycle, int ba, int a) {
        if (!burst_length_) fail(cycle, "ACTIVE before the mode register is loaded");
        Bank& bank = banks_[ba];
        std::string what = "ACTIVE in bank " + std::to_string(ba);
        if (bank.row >= 0)
            fail(cycle, "ACTIVE of row " + std::to_string(a) + " in bank " + std::to_string(ba) + ", whose row " +
                            std::to_string(bank.row) + " is open");
        after(cycle, bank.precharged, t_.t_rp, what, "tRP from PRECHARGE");
        after(cycle, bank.activated, t_.t_rc, what, "tRC from ACTIVE in the same bank");
        after(cycle, last_active_, t_.t_rrd, what, "tRRD from ACTIVE in any bank");
        after(cycle, last_refresh_, t_.t_rfc, what, "tRFC from REFRESH");
        bank.row = a;
        bank.activated = last_active_ = cycle;
    }

    // The column of a READ or WRITE, once it is allowed.
    int column(int64_t cycle, const char* name, int ba, int a) const {
        std::string what = std::string(name) + " to bank " + std::to_string(ba);
        if (!burst_length_) fail(cycle, std::string(name) + " before the mode register is loaded");
        const Bank& bank = banks_[ba];
        if (bank.row < 0) fail(cycle, what + ", which has no open row");
        after(cycle, bank.activated, t_.t_rcd, what, "tRCD from ACTIVE");
        if (cycle < burst_until_)
            fail(cycle, what + " cuts short the burst under way (it ends at cycle " + std::to_string(burst_until_) + ")");
        if ((a >> 10) & 1) fail(cycle, what + " with auto precharge (A10), which the model does not have");
        return a & ((1 << g_.col_bits) - 1);
    }

    void read(int64_t cycle, int ba, int a) {
        int first = column(cycle, "READ", ba, a);
        Bank& bank = banks_[ba];
        for (int i = 0; i < burst_length_; ++i) {
            Slot& slot = scheduled_[(cycle + cas_latency_ + i) & (SLOTS - 1)];
            slot.cycle = cycle + cas_latency_ + i;
            slot.word = words_[address(ba, bank.row, burst_column(first, i))];
        }
        burst_until_ = bank.read_end = cycle + burst_length_;
    }

    void write(int64_t cycle, int ba, int a) {
        write_column_ = column(cycle, "WRITE", ba, a);
        write_bank_ = ba;
        write_row_ = banks_[ba].row;
        write_left_ = burst_length_;
        burst_until_ = cycle + burst_length_;
        banks_[ba].write_end = cycle + burst_length_ - 1;
    }

    void precharge(int64_t cycle, int ba, bool all) {
        double write_recovery = t_.t_wr > t_.t_wr_cycles * period_ ? t_.t_wr : t_.t_wr_cycles * period_;
        for (size_t b = all ? 0 : size_t(ba); b < (all ? banks_.size() : size_t(ba) + 1); ++b) {
            Bank& bank = banks_[b];
            if (bank.row < 0) continue;
            std::string what = "PRECHARGE of bank " + std::to_string(b);
            after(cycle, bank.activated, t_.t_ras, what, "tRAS from ACTIVE");
            after(cycle, bank.write_end, write_recovery, what, "tWR from the last write data");
            if (cycle < bank.read_end) fail(cycle, what + " cuts its read burst short");
            bank.row = -1;
            bank.precharged = cycle;
        }
        precharged_all_ |= all;
    }

    void all_idle(int64_t cycle, const char* name) const {
        for (size_t b = 0; b < banks_.size(); ++b) {
            const Bank& bank = banks_[b];
            if (bank.row >= 0)
                fail(cycle, std::string(name) + " while bank " + std::to_string(b) + " has row " + std::to_string(bank.row) + " open");
            std::string bank_name = " of bank " + std::to_string(b);
            after(cycle, bank.precharged, t_.t_rp, name, ("tRP from PRECHARGE" + bank_name).c_str());
            after(cycle, bank.activated, t_.t_rc, name, ("tRC from ACTIVE" + bank_name).c_str());
        }
        after(cycle, last_refresh_, t_.t_rfc, name, "tRFC from REFRESH");
    }

    void refresh(int64_t cycle) {
        all_idle(cycle, "REFRESH");
        last_refresh_ = cycle;
        if (!burst_length_) ++init_refreshes_;
    }

    void mode(int64_t cycle, int a) {
        all_idle(cycle, "MODE");
        if (init_refreshes_ < t_.init_refreshes)
            fail(cycle, "MODE after " + std::to_string(init_refreshes_) + " auto refreshes; initialisation needs " +
                            std::to_string(t_.init_refreshes));
        int length_code = a & 7, latency = (a >> 4) & 7;
        if (length_code > 3 || ((a >> 3) & 1) || (latency != 2 && latency != 3) || (a >> 7)) {
            char text[160];
            snprintf(text, sizeof(text), "MODE %#x: the model has burst lengths 1-8 (sequential), CAS latency 2 or 3 "
                     "and burst writes only", a);
            fail(cycle, text);
        }
        burst_length_ = 1 << length_code;
        cas_latency_ = latency;
        mode_set_ = cycle;
    }
};

}  // namespace sdram

// Replays pins on the C++ SDRAM chip of sim/sdram_chip.h, for tests/test_sdram_chip.py.
//
//   sdram_chip_driver PERIOD_NS ROW_BITS COL_BITS BANK_BITS T_RP T_RCD T_RAS T_RAS_MAX T_RC T_RRD T_WR
//                     T_WR_CYCLES T_RFC T_MRD_CYCLES T_REFI T_INIT INIT_REFRESHES
//
// Reads one line a cycle from stdin: "CYCLE CLK_EN CS RAS CAS WE BA A DQ_O DQ_OE DQM"; after each, prints
// "CYCLE WORD" when the chip drives dq in that cycle. A broken rule ends it as in the board's simulation.
#include "sdram_chip.h"

#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
    if (argc != 18) {
        fprintf(stderr, "usage: sdram_chip_driver PERIOD_NS ROW_BITS COL_BITS BANK_BITS and the 13 timing values\n");
        return 2;
    }
    auto real = [&](int i) { return atof(argv[i]); };
    auto whole = [&](int i) { return atoi(argv[i]); };
    sdram::Timing timing{real(5), real(6), real(7), real(8), real(9), real(10), real(11), whole(12),
                         real(13), whole(14), real(15), real(16), whole(17)};
    sdram::Chip chip(timing, {whole(2), whole(3), whole(4)}, real(1));
    long long cycle;
    sdram::Pins pins;
    while (scanf("%lld %d %d %d %d %d %d %d %d %d %d", &cycle, &pins.clk_en, &pins.cs, &pins.ras, &pins.cas,
                 &pins.we, &pins.ba, &pins.a, &pins.dq_o, &pins.dq_oe, &pins.dqm) == 11) {
        chip.clock(cycle, pins);
        uint16_t word;
        if (chip.output(cycle, &word)) printf("%lld %u\n", cycle, word);
    }
    return 0;
}

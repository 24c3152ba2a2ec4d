// The whole board simulated: the Verilator model of LinkSoc (UART, host link, core, memory) with its serial
// line bridged to a TCP connection, so the host's `board` executor reaches it through pyserial's
// socket://127.0.0.1:PORT exactly as it reaches a board's /dev/ttyUSB0. board_config.h (written by
// sim/board_sim.py) says which memory the SoC has: on-chip (MVU_SDRAM 0) or an SDRAM controller, whose pins
// go to the behavioural chip of sdram_chip.h (MVU_SDRAM 1), clocked as the board clocks it.
//
//   board_sim DIVISOR PORT_FILE
//
// Listens on 127.0.0.1 (any free port, written to PORT_FILE once listening), accepts one connection,
// and runs until that connection closes or SIGTERM; then it prints the SDRAM commands it saw as one line
// "sdram commands: NAME=COUNT ..." and exits 0 (3 when the chip saw a timing rule broken, with the rule on
// stderr). Bytes from the host are sent on the UART's rx line as 8N1 frames of DIVISOR clock cycles per
// bit; frames on tx are decoded the same way and sent back.
#include "Vlink_soc.h"
#include "board_config.h"
#include "verilated.h"

#include <arpa/inet.h>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <csignal>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

namespace {

volatile std::sig_atomic_t stopping = 0;

void stop(int) { stopping = 1; }

// Serializes queued bytes onto the rx line: start bit, 8 data bits (LSB first), stop bit.
struct Serializer {
    int divisor;
    std::deque<uint8_t> queue;
    int bit = -1, count = 0;  // bit of the frame being sent (-1: idle); cycles left of it
    uint16_t frame = 0;

    bool idle() const { return bit < 0 && queue.empty(); }

    int line() {  // the line's level for this cycle
        if (bit < 0) {
            if (queue.empty()) return 1;
            frame = static_cast<uint16_t>((queue.front() << 1) | 0x200);  // start 0, data, stop 1
            queue.pop_front();
            bit = 0;
            count = divisor;
        }
        int level = (frame >> bit) & 1;
        if (--count == 0) {
            count = divisor;
            if (++bit == 10) bit = -1;
        }
        return level;
    }
};

// Decodes the tx line: a falling edge starts a frame, each bit is sampled in its middle.
struct Deserializer {
    int divisor;
    int bit = -1, count = 0;
    uint8_t byte = 0;

    bool busy() const { return bit >= 0; }

    bool sample(int level, uint8_t* out) {  // true when a byte completes
        if (bit < 0) {
            if (level == 0) {
                bit = 0;
                count = divisor + divisor / 2;  // the middle of data bit 0
                byte = 0;
            }
            return false;
        }
        if (--count > 0) return false;
        count = divisor;
        if (bit < 8) {
            byte |= static_cast<uint8_t>(level << bit);
            ++bit;
            return false;
        }
        bit = -1;  // the stop bit
        *out = byte;
        return true;
    }
};

int listen_once(const char* port_file) {
    int server = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = 0;
    socklen_t length = sizeof(address);
    if (server < 0 || bind(server, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
        listen(server, 1) != 0 || getsockname(server, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
        perror("board_sim: listen");
        exit(2);
    }
    FILE* file = fopen(port_file, "w");
    fprintf(file, "%d\n", ntohs(address.sin_port));
    fclose(file);
    int client = accept(server, nullptr, nullptr);
    close(server);
    int one = 1;
    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return client;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: board_sim DIVISOR PORT_FILE\n");
        return 2;
    }
    int divisor = atoi(argv[1]);
    struct sigaction on_term {};
    on_term.sa_handler = stop;  // no SA_RESTART: a SIGTERM also ends a wait in accept()
    sigaction(SIGTERM, &on_term, nullptr);
    int client = listen_once(argv[2]);
    Vlink_soc top;
#if MVU_SDRAM
    sdram::Chip chip(SDRAM_TIMING, SDRAM_GEOMETRY, SDRAM_PERIOD_NS);
    uint64_t noise = 1;  // what dq reads while nobody drives it
#endif
    top.rx = 1;
    top.rst = 1;
    for (int i = 0; i < 4; ++i) {
        top.clk = 0;
        top.eval();
        top.clk = 1;
        top.eval();
    }
    top.rst = 0;
    Serializer rx{divisor};
    Deserializer tx{divisor};
    std::vector<uint8_t> outbox;
    uint8_t buffer[4096];
    uint64_t quiet = 0;  // cycles in a row with nothing on either line and the core idle
    for (int64_t cycle = 0; !stopping; ++cycle) {
        quiet = (rx.idle() && !tx.busy() && !top.busy && outbox.empty()) ? quiet + 1 : 0;
        bool sleepy = quiet > 100000;  // the link has surely answered: wait for the host instead of spinning
        if (sleepy || (cycle & 255) == 0) {  // the host's bytes
            pollfd wanted{client, POLLIN, 0};
            if (poll(&wanted, 1, sleepy ? 20 : 0) > 0) {
                ssize_t got = recv(client, buffer, sizeof(buffer), 0);
                if (got <= 0) break;  // the host closed the port
                rx.queue.insert(rx.queue.end(), buffer, buffer + got);
            }
        }
        top.rx = rx.line();
        top.clk = 0;
        top.eval();
        top.clk = 1;
        top.eval();
#if MVU_SDRAM
        // The pins of this cycle; dq for the controller's next edge, from the chip's output SDRAM_READ_DELAY
        // cycles on (the chip on the inverted clock: its data comes half a cycle sooner, -1).
        chip.clock(cycle, {top.sdram_clk_en, top.sdram_cs, top.sdram_ras, top.sdram_cas, top.sdram_we, top.sdram_ba,
                           top.sdram_a, top.sdram_dq_o, top.sdram_dq_oe, top.sdram_dqm});
        uint16_t word;
        noise = noise * 6364136223846793005ULL + 1442695040888963407ULL;
        top.sdram_dq_i = chip.output(cycle - SDRAM_READ_DELAY, &word) ? word : static_cast<uint16_t>(noise >> 48);
#endif
        uint8_t byte;
        if (tx.sample(top.tx, &byte)) outbox.push_back(byte);
        if (!outbox.empty()) {
            ssize_t sent = send(client, outbox.data(), outbox.size(), MSG_DONTWAIT);
            if (sent > 0) outbox.erase(outbox.begin(), outbox.begin() + sent);
        }
    }
    close(client);
    top.final();
#if MVU_SDRAM
    printf("sdram commands:");
    for (int command = sdram::READ; command < sdram::COMMANDS; ++command)
        printf(" %s=%llu", sdram::NAMES[command], static_cast<unsigned long long>(chip.counts[command]));
    printf("\n");
#endif
    return 0;
}

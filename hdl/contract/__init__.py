"""The contract between the hardware and everything that drives it: the configuration, the instruction
set, the CSR map, programs in memory and the post-processor's arithmetic. It imports nothing else of mvu;
the HDL generator, the simulator and the host all read it."""

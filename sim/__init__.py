"""Simulation of the RTL: the Verilator model with its memory model, and the cocotb benches."""

"""Compiled BPF objects (built by tools/build_bpf.py)."""

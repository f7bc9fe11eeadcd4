"""The ``calico-ebpf`` command: thin verb-noun wrappers over the library layers."""

"""L2: typed map entries, the codec (Cython + pure-Python fallback), typed
and named maps. Entry classes live in :mod:`calico_ebpf.maps.entries`."""

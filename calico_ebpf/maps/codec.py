"""Bulk encode/decode of map entries: the Cython codec, or the pure-Python
fallback when ``CALICO_EBPF_PURE_PYTHON=1`` (then the compiled module is not
even imported) or when the extension was not built.

    >>> from calico_ebpf.maps.codec import encode_many, decode_many
    >>> from calico_ebpf.maps.nat import NatBackendKey
    >>> decode_many(NatBackendKey, encode_many([NatBackendKey(1, 0), NatBackendKey(1, 1)]))
    [NatBackendKey(id=1, ordinal=0), NatBackendKey(id=1, ordinal=1)]

``IMPLEMENTATION`` says which one is in use (``"cython"`` or ``"python"``).
"""

from __future__ import annotations

import os

PURE_PYTHON = os.environ.get("CALICO_EBPF_PURE_PYTHON") == "1"

if PURE_PYTHON:
    from calico_ebpf.maps import _codec_py as _impl
else:
    try:
        from calico_ebpf.maps import _codec_c as _impl
    except ImportError:  # not built (e.g. a source checkout without build_ext)
        from calico_ebpf.maps import _codec_py as _impl

IMPLEMENTATION: str = _impl.IMPLEMENTATION
encode_many = _impl.encode_many
encode_into = _impl.encode_into
decode_many = _impl.decode_many
decode_items = _impl.decode_items

__all__ = ["IMPLEMENTATION", "PURE_PYTHON", "encode_many", "encode_into", "decode_many", "decode_items"]

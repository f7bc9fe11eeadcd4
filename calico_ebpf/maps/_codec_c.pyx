# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython codec: the same layout tables as ``_codec_py``, compiled once per
entry class into an array of C ops.

Why a second source rather than one pure-Python-mode file: the speed comes
from things Python cannot express (reading attrs slots at their C offsets,
building objects with tp_alloc and filling their slots, unaligned stores into
a preallocated buffer). A shared pure-Python-mode file would be two
implementations behind ``cython.compiled`` branches anyway. What the two
share instead is the data that could make them disagree: offsets, kinds,
guards and the custom converters all come from ``layout.py``, and the tests
run every case through both and require identical bytes and equal objects.
"""

import ipaddress

from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF
from cpython.bytearray cimport PyByteArray_AS_STRING
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from calico_ebpf.maps import layout as L

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef *d_member
    object PyType_GenericAlloc(PyTypeObject *t, Py_ssize_t n)
    PyObject *PyDict_GetItem(object d, object k)
    PyTypeObject *Py_TYPE(object o)
    object PyLong_FromUnsignedLongLong(unsigned long long v)
    object PyLong_FromLongLong(long long v)
    void *PyMem_Malloc(size_t n)
    void PyMem_Free(void *p)
    void PyObject_GC_UnTrack(void *o)
    long long PyLong_AsLongLongAndOverflow(object o, int *overflow) except? -1
    PyObject *PyErr_Occurred()
    bint PyLong_Check(object o)
    void PyErr_Clear()
    unsigned long long PyLong_AsUnsignedLongLong(object o)

cdef extern from *:
    uint32_t __builtin_bswap32(uint32_t)
    uint64_t __builtin_bswap64(uint64_t)

IMPLEMENTATION = "cython"

# Storage and value kinds, mirrored from layout.py (checked at import below).
cdef enum:
    K_U8 = 0
    K_U16 = 1
    K_U32 = 2
    K_U64 = 3
    K_S32 = 4
    K_BE64 = 5
    K_IPV4 = 6
    K_BYTES = 7
    V_INT = 0
    V_ENUM = 1
    V_ADDR4 = 2
    V_STRUCT = 3
    V_CUSTOM = 4
    MAX_PARTS = 4
    T_OBJECT_EX = 16

assert (L.U8, L.U16, L.U32, L.U64, L.S32, L.BE64, L.IPV4, L.BYTES) == tuple(range(8))
assert (L.V_INT, L.V_ENUM, L.V_ADDR4, L.V_STRUCT, L.V_CUSTOM) == tuple(range(5))

# Typed limits: Cython would compare against literals beyond 2**31 as Python ints.
cdef long long U8_MAX = 0xFF
cdef long long U16_MAX = 0xFFFF
cdef long long U32_MAX = 0xFFFFFFFF
cdef long long S32_MIN = -0x80000000
cdef long long S32_MAX = 0x7FFFFFFF

cdef type IPv4Address = ipaddress.IPv4Address
cdef MemberDescriptor = type(ipaddress.IPv4Address._ip)


cdef Py_ssize_t _slot_offset(type cls, str name) except -1:
    """Byte offset of the slot holding attribute ``name`` in ``cls`` objects."""
    for klass in cls.__mro__:
        descr = klass.__dict__.get(name)
        if descr is not None:
            if type(descr) is not MemberDescriptor or (<PyMemberDescrObject *>descr).d_member.type != T_OBJECT_EX:
                raise TypeError(f"{cls.__name__}.{name} is not a slot")
            return (<PyMemberDescrObject *>descr).d_member.offset
    raise AttributeError(f"{cls.__name__} has no slot {name!r}")


cdef Py_ssize_t IP_SLOT = _slot_offset(IPv4Address, "_ip")


cdef struct Op:
    int vtype
    int nparts
    int kind[MAX_PARTS]
    Py_ssize_t off[MAX_PARTS]
    Py_ssize_t size[MAX_PARTS]
    Py_ssize_t slot
    bint guarded
    uint64_t when_mask  # bit g set: present when the guard value is g


cdef class Program:
    """The compiled form of one Layout."""

    cdef Op *ops
    cdef int n
    cdef type cls
    cdef Py_ssize_t size
    cdef list fields    # layout.Field per op
    cdef list subs      # Program per op (V_STRUCT) else None
    cdef list caches    # enum decode cache dict per op (V_ENUM) else None
    cdef list defaults  # value for a guarded-off field
    cdef int guard_op   # index of the guard op, -1 = none
    cdef Py_ssize_t guard_slot
    cdef object __weakref__

    def __dealloc__(self):
        PyMem_Free(self.ops)
        self.ops = NULL


cdef dict _programs = {}


cdef Program _program(type cls):
    cdef Program prog = _programs.get(cls)
    if prog is not None:
        return prog
    layout = cls.__layout__
    prog = Program.__new__(Program)
    n = len(layout.fields)
    prog.ops = <Op *>PyMem_Malloc(max(n, 1) * sizeof(Op))
    if prog.ops == NULL:
        raise MemoryError()
    memset(prog.ops, 0, max(n, 1) * sizeof(Op))
    prog.n = n
    prog.cls = cls
    prog.size = layout.size
    prog.fields = list(layout.fields)
    prog.subs = []
    prog.caches = []
    prog.defaults = []
    prog.guard_op = -1
    prog.guard_slot = 0
    cdef Op *op
    for i, f in enumerate(layout.fields):
        op = &prog.ops[i]
        op.vtype = f.vtype
        if len(f.parts) > MAX_PARTS:
            raise ValueError(f"{cls.__name__}.{f.name}: too many parts")
        op.nparts = len(f.parts)
        for j, part in enumerate(f.parts):
            op.kind[j] = part.kind
            op.off[j] = part.offset
            op.size[j] = part.size
        op.slot = _slot_offset(cls, f.name)
        op.guarded = f.when is not None
        op.when_mask = 0
        if f.when is not None:
            for g in f.when:
                if not 0 <= int(g) < 64:
                    raise ValueError("guard values must be 0..63")
                op.when_mask |= (<uint64_t>1) << int(g)
        if f.name == layout.guard:
            prog.guard_op = i
            prog.guard_slot = op.slot
        prog.subs.append(_program(f.sub.cls) if f.vtype == V_STRUCT else None)
        prog.caches.append(f.cache if f.vtype == V_ENUM else None)
        prog.defaults.append(f.default)
    _programs[cls] = prog
    return prog


# ---------------------------------------------------------------------------
# primitive stores/loads (x86/arm64 little-endian hosts)


cdef inline uint64_t _load(int kind, const uint8_t *p) noexcept:
    cdef uint16_t v16
    cdef uint32_t v32
    cdef uint64_t v64
    if kind == K_U8:
        return p[0]
    elif kind == K_U16:
        memcpy(&v16, p, 2)
        return v16
    elif kind == K_U32 or kind == K_S32:
        memcpy(&v32, p, 4)
        return v32
    elif kind == K_IPV4:
        memcpy(&v32, p, 4)
        return __builtin_bswap32(v32)
    elif kind == K_U64:
        memcpy(&v64, p, 8)
        return v64
    else:  # K_BE64
        memcpy(&v64, p, 8)
        return __builtin_bswap64(v64)


cdef inline void _store(int kind, uint8_t *p, uint64_t v) noexcept:
    cdef uint16_t v16
    cdef uint32_t v32
    if kind == K_U8:
        p[0] = <uint8_t>v
    elif kind == K_U16:
        v16 = <uint16_t>v
        memcpy(p, &v16, 2)
    elif kind == K_U32 or kind == K_S32:
        v32 = <uint32_t>v
        memcpy(p, &v32, 4)
    elif kind == K_IPV4:
        v32 = __builtin_bswap32(<uint32_t>v)
        memcpy(p, &v32, 4)
    elif kind == K_U64:
        memcpy(p, &v, 8)
    else:  # K_BE64
        v = __builtin_bswap64(v)
        memcpy(p, &v, 8)


cdef inline uint64_t _to_raw(int kind, object value, Program prog, int i) except? 0xDEADBEEF:
    """Range-checked conversion of a Python int to the kind's raw word
    (``prog.fields[i]`` names the field in errors; looked up only then)."""
    cdef long long s
    cdef unsigned long long u
    cdef int overflow = 0
    if kind == K_U64 or kind == K_BE64:
        if not PyLong_Check(value):
            raise TypeError(f"{prog.fields[i].owner}.{prog.fields[i].name}: {value!r} is not an integer")
        u = PyLong_AsUnsignedLongLong(value)
        if u == <unsigned long long>-1 and PyErr_Occurred() != NULL:
            PyErr_Clear()  # an int that does not fit: OverflowError
            raise L.range_error(prog.fields[i].owner, prog.fields[i].name, value, kind)
        return u
    s = PyLong_AsLongLongAndOverflow(value, &overflow)
    if s == -1 and PyErr_Occurred() != NULL:
        raise
    if overflow:
        raise L.range_error(prog.fields[i].owner, prog.fields[i].name, value, kind)
    if kind == K_S32:
        if s < S32_MIN or s > S32_MAX:
            raise L.range_error(prog.fields[i].owner, prog.fields[i].name, value, kind)
        return <uint64_t><uint32_t><int32_t>s
    if s < 0 or (kind == K_U8 and s > U8_MAX) or (kind == K_U16 and s > U16_MAX) or s > U32_MAX:
        raise L.range_error(prog.fields[i].owner, prog.fields[i].name, value, kind)
    return <uint64_t>s


cdef inline object _from_raw(int kind, uint64_t raw):
    if kind == K_S32:
        return PyLong_FromLongLong(<int32_t><uint32_t>raw)
    return PyLong_FromUnsignedLongLong(raw)


cdef inline PyObject *_get_slot(object obj, Py_ssize_t slot):
    return (<PyObject **>((<char *><PyObject *>obj) + slot))[0]


cdef inline void _set_slot(object obj, Py_ssize_t slot, object value) noexcept:
    # The object comes fresh from tp_alloc: the slot is NULL, nothing to release.
    Py_INCREF(value)
    (<PyObject **>((<char *><PyObject *>obj) + slot))[0] = <PyObject *>value


cdef inline object _new(type cls):
    # Decoded entries only point at immutable, freshly built or shared atomic
    # objects (ints, addresses, enum members, other entries), so they can
    # never be part of a reference cycle: leaving them untracked keeps the
    # cyclic GC from rescanning millions of them during a bulk decode.
    cdef object obj = PyType_GenericAlloc(<PyTypeObject *>cls, 0)
    PyObject_GC_UnTrack(<PyObject *>obj)
    return obj


cdef inline object _new_ipv4(uint64_t raw):
    cdef object addr = _new(IPv4Address)
    _set_slot(addr, IP_SLOT, PyLong_FromUnsignedLongLong(raw))
    return addr


cdef object _missing(Program prog, int i):
    return AttributeError(f"{prog.cls.__name__}.{prog.fields[i].name} is not set")


# ---------------------------------------------------------------------------
# encode


cdef int _encode(Program prog, object e, uint8_t *p) except -1:
    cdef Op *op
    cdef PyObject *v
    cdef PyObject *ipv
    cdef int i, j
    cdef int64_t guard = -1
    cdef uint64_t raw
    cdef object field
    if <PyTypeObject *>Py_TYPE(e) != <PyTypeObject *>prog.cls:
        raise TypeError(f"expected {prog.cls.__name__}, got {type(e).__name__}")
    if prog.guard_op >= 0:
        v = _get_slot(e, prog.guard_slot)
        if v == NULL:
            raise _missing(prog, prog.guard_op)
        guard = <object>v
    for i in range(prog.n):
        op = &prog.ops[i]
        if op.guarded and not (0 <= guard < 64 and (op.when_mask >> guard) & 1):
            continue
        v = _get_slot(e, op.slot)
        if v == NULL:
            raise _missing(prog, i)
        if op.vtype == V_ADDR4:
            if <PyTypeObject *>Py_TYPE(<object>v) != <PyTypeObject *>IPv4Address:
                field = prog.fields[i]
                raise TypeError(f"{field.owner}.{field.name}: expected IPv4Address, got {type(<object>v).__name__}")
            ipv = _get_slot(<object>v, IP_SLOT)
            _store(K_IPV4, p + op.off[0], _to_raw(K_IPV4, <object>ipv, prog, i))
        elif op.vtype == V_INT or op.vtype == V_ENUM:
            if op.nparts == 1:
                _store(op.kind[0], p + op.off[0], _to_raw(op.kind[0], <object>v, prog, i))
            else:
                # consecutive little-endian pieces; the parts are U8 here (ct flags)
                raw = _to_raw(K_U32, <object>v, prog, i)
                for j in range(op.nparts):
                    _store(op.kind[j], p + op.off[j], raw)
                    raw >>= 8 * op.size[j]
        elif op.vtype == V_STRUCT:
            _encode(<Program>prog.subs[i], <object>v, p + op.off[0])
        else:
            _encode_custom(prog, i, e, p)
    return 0


cdef int _encode_custom(Program prog, int i, object e, uint8_t *p) except -1:
    cdef Py_ssize_t n
    cdef const uint8_t[::1] data
    field = prog.fields[i]
    raws = field.to_raw(e)
    for part, raw in zip(field.parts, raws):
        if part.kind == K_BYTES:
            n = len(raw)
            if n > part.size:
                raise L.range_error(field.owner, field.name, raw, K_BYTES)
            if n:
                data = raw
                memcpy(p + <Py_ssize_t>part.offset, &data[0], n)
        else:
            _store(part.kind, p + <Py_ssize_t>part.offset, _to_raw(part.kind, raw, prog, i))
    return 0


def encode_into(entries, type cls, buf, Py_ssize_t offset=0):
    """Encode ``entries`` (all exactly ``cls``) into the zeroed writable
    buffer ``buf`` at ``offset``; returns the number of bytes written."""
    cdef Program prog = _program(cls)
    cdef uint8_t[::1] view = memoryview(buf).cast("B")
    cdef Py_ssize_t size = prog.size
    cdef Py_ssize_t pos = offset
    cdef Py_ssize_t total = view.shape[0]
    cdef uint8_t *base
    if not isinstance(entries, (list, tuple)):
        entries = list(entries)
    if offset < 0 or offset + len(entries) * size > total:
        raise ValueError(f"buffer too small for {len(entries)} x {size} bytes at offset {offset}")
    if total == 0:
        return 0
    base = &view[0]
    for e in entries:
        _encode(prog, e, base + pos)
        pos += size
    return pos - offset


def encode_many(entries, type cls=None):
    """Concatenated C structs of ``entries`` (one class, given or taken from
    the first entry)."""
    if not isinstance(entries, (list, tuple)):
        entries = list(entries)
    cdef Py_ssize_t n = len(entries)
    if n == 0:
        return bytearray()
    if cls is None:
        cls = type(entries[0])
    cdef Program prog = _program(cls)
    cdef bytearray buf = bytearray(n * prog.size)
    cdef uint8_t *p = <uint8_t *>PyByteArray_AS_STRING(buf)
    cdef Py_ssize_t size = prog.size
    cdef Py_ssize_t i
    cdef list lst = entries if type(entries) is list else list(entries)
    for i in range(n):
        _encode(prog, lst[i], p + i * size)
    return buf


# ---------------------------------------------------------------------------
# decode


cdef object _decode(Program prog, const uint8_t *p):
    cdef object obj = _new(prog.cls)
    cdef Op *op
    cdef int i, j, shift
    cdef int64_t guard = -1
    cdef uint64_t raw
    cdef PyObject *hit
    cdef object value
    for i in range(prog.n):
        op = &prog.ops[i]
        if op.guarded and not (0 <= guard < 64 and (op.when_mask >> guard) & 1):
            _set_slot(obj, op.slot, prog.defaults[i])
            continue
        if op.vtype == V_STRUCT:
            value = _decode(<Program>prog.subs[i], p + op.off[0])
        elif op.vtype == V_CUSTOM:
            value = _decode_custom(prog.fields[i], p)
        else:
            if op.nparts == 1:
                raw = _load(op.kind[0], p + op.off[0])
            else:
                raw = 0
                shift = 0
                for j in range(op.nparts):
                    raw |= _load(op.kind[j], p + op.off[j]) << shift
                    shift += 8 * op.size[j]
            if i == prog.guard_op:
                guard = <int64_t>raw if raw < 64 else 64
            if op.vtype == V_INT:
                value = _from_raw(op.kind[0], raw)
            elif op.vtype == V_ENUM:
                key = PyLong_FromUnsignedLongLong(raw)
                hit = PyDict_GetItem(prog.caches[i], key)
                value = <object>hit if hit != NULL else prog.fields[i].enum_value(key)
            else:
                value = _new_ipv4(raw)
        _set_slot(obj, op.slot, value)
    return obj


cdef object _decode_custom(object field, const uint8_t *p):
    raws = []
    for part in field.parts:
        if part.kind == K_BYTES:
            raws.append((<const char *>p)[<Py_ssize_t>part.offset:<Py_ssize_t>part.offset + <Py_ssize_t>part.size])
        else:
            raws.append(_from_raw(part.kind, _load(part.kind, p + <Py_ssize_t>part.offset)))
    return field.from_raw(*raws)


def decode_many(type cls, buffer, count=None):
    """Entries of class ``cls`` from concatenated structs in ``buffer``."""
    cdef Program prog = _program(cls)
    cdef const uint8_t[::1] view = memoryview(buffer).cast("B")
    cdef Py_ssize_t size = prog.size
    cdef Py_ssize_t total = view.shape[0]
    cdef Py_ssize_t n, i
    if count is None:
        if total % size:
            raise L.ModelError(cls.__name__, "bytes", f"{total} bytes is not a multiple of {size}")
        n = total // size
    else:
        n = count
        if n * size > total:
            raise L.ModelError(cls.__name__, "bytes", f"{n} entries need {n * size} bytes, got {total}")
    cdef list out = [None] * n
    if n == 0:
        return out
    cdef const uint8_t *base = &view[0]
    for i in range(n):
        out[i] = _decode(prog, base + i * size)
    return out


def decode_items(type kcls, type vcls, kbuf, vbuf, count=None):
    """``[(key, value), ...]`` from packed keys and values.

    The pair tuples are left untracked by the cyclic GC like the entries
    (they only hold immutable entries), so building millions of them does
    not trigger repeated full collections."""
    keys = decode_many(kcls, kbuf, count)
    vals = decode_many(vcls, vbuf, len(keys))
    cdef Py_ssize_t n = len(keys)
    cdef Py_ssize_t i
    cdef list out = [None] * n
    cdef tuple pair
    for i in range(n):
        pair = (keys[i], vals[i])
        PyObject_GC_UnTrack(<PyObject *>pair)
        out[i] = pair
    return out

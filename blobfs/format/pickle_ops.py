"""Opcode handlers of the safe pickle interpreter (see ``pickle_vm``).

Each handler is ``(vm, data, pos, limit, file_end, framed, base) -> new pos`` and checks
every length it needs (``vm._need``) before it changes any state, so an opcode cut by the
end of the buffer can be retried after a refill. Lengths declared in the data are compared
with the caps and with the rest of the file before anything is allocated.
"""
from __future__ import annotations

from blobfs.format.pickle_vm import (
    ALLOWED_GLOBAL, BLOB_CLASS, MAX_DEPTH, MAX_INT_BYTES, MAX_LINE, MAX_STR, REPEATED_ENTRY, Obj,
    Refused, Unreadable, _KEY_TYPES, _f64, _u32, _u64,
)


def _str_len(vm, data, pos, hdr, n, limit, file_end, framed, base, what):
    if n > MAX_STR:
        raise Refused(f"{what} of {n} bytes (limit {MAX_STR})", base + pos)
    if pos + hdr + n > file_end:
        raise Unreadable(f"truncated pickle ({what} of {n} bytes)", base + pos)
    return vm._need(data, pos, hdr + n, limit, file_end, framed, base)


def _decode(raw, pos, base) -> str:
    try:
        return str(raw, "utf-8", "surrogatepass")  # what pickle does for BINUNICODE
    except UnicodeDecodeError:
        raise Unreadable("string is not UTF-8", base + pos) from None


def _string_op(hdr, fmt, what, make):
    """Length-prefixed str or bytes: the declared length is checked before any copy."""
    def op(vm, data, pos, limit, file_end, framed, base):
        vm._need(data, pos, hdr, limit, file_end, framed, base)
        n = fmt(data, pos + 1)
        end = _str_len(vm, data, pos, hdr, n, limit, file_end, framed, base, what)
        vm.stack.append(make(bytes(data[pos + hdr:end]), pos, base))
        return end
    return op


def _unicode(hdr, fmt):
    return _string_op(hdr, fmt, "string", _decode)


def _bytes(hdr, fmt):
    return _string_op(hdr, fmt, "bytes", lambda raw, pos, base: raw)


def _int_op(size, signed):
    def op(vm, data, pos, limit, file_end, framed, base):
        end = vm._need(data, pos, 1 + size, limit, file_end, framed, base)
        vm.stack.append(int.from_bytes(data[pos + 1:end], "little", signed=signed))
        return end
    return op


def _long(hdr, fmt):
    def op(vm, data, pos, limit, file_end, framed, base):
        vm._need(data, pos, hdr, limit, file_end, framed, base)
        n = fmt(data, pos + 1)
        if n > MAX_INT_BYTES:
            raise Refused(f"integer of {n} bytes (limit {MAX_INT_BYTES})", base + pos)
        end = vm._need(data, pos, hdr + n, limit, file_end, framed, base)
        vm.stack.append(int.from_bytes(data[pos + hdr:end], "little", signed=True))
        return end
    return op


def _const(value):
    def op(vm, data, pos, limit, file_end, framed, base):
        vm.stack.append(value)
        return pos + 1
    return op


def _empty(factory):
    def op(vm, data, pos, limit, file_end, framed, base):
        vm.stack.append(factory())
        return pos + 1
    return op


def _b1(data, p):
    return data[p]


def _b4(data, p):
    return _u32(data, p)[0]


def _b8(data, p):
    return _u64(data, p)[0]


def op_proto(vm, data, pos, limit, file_end, framed, base):
    end = vm._need(data, pos, 2, limit, file_end, framed, base)
    if not 2 <= data[pos + 1] <= 5:
        raise Unreadable(f"pickle protocol {data[pos + 1]} (only 2-5 are read)", base + pos)
    return end


def op_float(vm, data, pos, limit, file_end, framed, base):
    end = vm._need(data, pos, 9, limit, file_end, framed, base)
    vm.stack.append(_f64(data, pos + 1)[0])
    return end


def op_mark(vm, data, pos, limit, file_end, framed, base):
    if len(vm.metastack) >= MAX_DEPTH:
        raise Refused(f"MARKs nested more than {MAX_DEPTH} deep", base + pos)
    vm.metastack.append(vm.stack)
    vm.stack = []
    return pos + 1


def op_pop(vm, data, pos, limit, file_end, framed, base):
    if vm.stack:
        vm.pop()
    else:
        vm.pop_mark()
    return pos + 1


def op_pop_mark(vm, data, pos, limit, file_end, framed, base):
    vm.pop_mark()
    return pos + 1


def op_dup(vm, data, pos, limit, file_end, framed, base):
    top = vm.top()
    if type(top) is Obj:
        raise Refused(REPEATED_ENTRY, base + pos)
    vm.stack.append(top)
    return pos + 1


def _get(hdr, fmt):
    def op(vm, data, pos, limit, file_end, framed, base):
        end = vm._need(data, pos, hdr, limit, file_end, framed, base)
        vm.stack.append(vm.memo_get(fmt(data, pos + 1), base + pos))
        return end
    return op


def _put(hdr, fmt):
    def op(vm, data, pos, limit, file_end, framed, base):
        end = vm._need(data, pos, hdr, limit, file_end, framed, base)
        vm.memo_put(fmt(data, pos + 1), vm.top(), base + pos)
        return end
    return op


def op_memoize(vm, data, pos, limit, file_end, framed, base):
    vm.memo_put(vm.memo_count, vm.top(), base + pos)
    return pos + 1


def _tuple_n(n):
    def op(vm, data, pos, limit, file_end, framed, base):
        items = [vm.pop() for _ in range(n)][::-1]
        t = tuple(items)
        vm.nest(t, items, base + pos)
        vm.stack.append(t)
        return pos + 1
    return op


def op_tuple(vm, data, pos, limit, file_end, framed, base):
    items = vm.expand(vm.pop_mark())
    t = tuple(items)
    vm.nest(t, items, base + pos)
    vm.stack.append(t)
    return pos + 1


def op_list(vm, data, pos, limit, file_end, framed, base):
    items = vm.expand(vm.pop_mark())
    vm.nest(items, items, base + pos)
    vm.stack.append(items)
    return pos + 1


def _setitems(vm, d, items, pos, base):
    if type(d) is not dict:
        raise Unreadable(f"SETITEM(S) on a {type(d).__name__}", base + pos)
    if len(items) % 2:
        raise Unreadable("odd number of items for SETITEMS", base + pos)
    for k in items[0::2]:
        if not isinstance(k, _KEY_TYPES):
            raise Unreadable(f"dict key of type {type(k).__name__}", base + pos)
    vm.nest(d, items[1::2], base + pos)
    for i in range(0, len(items), 2):
        d[items[i]] = items[i + 1]


def op_dict(vm, data, pos, limit, file_end, framed, base):
    items = vm.expand(vm.pop_mark())
    d: dict = {}
    _setitems(vm, d, items, pos, base)
    vm.stack.append(d)
    return pos + 1


def op_setitem(vm, data, pos, limit, file_end, framed, base):
    v = vm.pop()
    k = vm.pop()
    _setitems(vm, vm.top(), [k, v], pos, base)
    return pos + 1


def op_setitems(vm, data, pos, limit, file_end, framed, base):
    items = vm.expand(vm.pop_mark())
    _setitems(vm, vm.top(), items, pos, base)
    return pos + 1


def op_append(vm, data, pos, limit, file_end, framed, base):
    x = vm.pop()
    lst = vm.top()
    if type(lst) is not list:
        raise Unreadable(f"APPEND to a {type(lst).__name__}", base + pos)
    vm.nest(lst, (x,), base + pos)
    lst.append(x)
    return pos + 1


def op_appends(vm, data, pos, limit, file_end, framed, base):
    items = vm.pop_mark()  # fast-path Runs stay packed: the reader unpacks top-level lists
    lst = vm.top()
    if type(lst) is not list:
        raise Unreadable(f"APPENDS to a {type(lst).__name__}", base + pos)
    vm.nest(lst, items, base + pos)
    lst.extend(items)
    return pos + 1


def _check_global(module, name, pos, base):
    if (module, name) != ALLOWED_GLOBAL:
        shown = f"{module}.{name}"
        if len(shown) > 120:
            shown = shown[:120] + "..."
        raise Refused(f"forbidden global {shown!r}", base + pos)
    return BLOB_CLASS


def op_global(vm, data, pos, limit, file_end, framed, base):
    parts = []
    p = pos + 1
    for _ in range(2):
        stop = min(limit, p + MAX_LINE)
        nl = bytes(data[p:stop]).find(b"\n")
        if nl < 0:
            if stop - p >= MAX_LINE:
                raise Refused("GLOBAL name longer than 256 bytes", base + pos)
            vm._need(data, pos, stop - pos + 1, limit, file_end, framed, base)
        parts.append(bytes(data[p:p + nl]).decode("utf-8", "replace"))
        p += nl + 1
    vm.stack.append(_check_global(parts[0], parts[1], pos, base))
    return p


def op_stack_global(vm, data, pos, limit, file_end, framed, base):
    name = vm.pop()
    module = vm.pop()
    if type(module) is not str or type(name) is not str:
        raise Unreadable("STACK_GLOBAL needs two strings", base + pos)
    vm.stack.append(_check_global(module, name, pos, base))
    return pos + 1


def op_newobj(vm, data, pos, limit, file_end, framed, base):
    args = vm.pop()
    cls = vm.pop()
    if cls is not BLOB_CLASS:
        raise Refused(f"NEWOBJ on a {type(cls).__name__}", base + pos)
    if args != () or type(args) is not tuple:
        raise Refused("NEWOBJ with arguments", base + pos)
    vm.stack.append(Obj())
    return pos + 1


def op_newobj_ex(vm, data, pos, limit, file_end, framed, base):
    kwargs = vm.pop()
    args = vm.pop()
    cls = vm.pop()
    if cls is not BLOB_CLASS:
        raise Refused(f"NEWOBJ_EX on a {type(cls).__name__}", base + pos)
    if type(args) is not tuple or args != () or type(kwargs) is not dict or kwargs:
        raise Refused("NEWOBJ_EX with arguments", base + pos)
    vm.stack.append(Obj())
    return pos + 1


def op_build(vm, data, pos, limit, file_end, framed, base):
    state = vm.pop()
    obj = vm.top()
    if type(obj) is not Obj:
        raise Refused(f"BUILD on a {type(obj).__name__}", base + pos)
    if type(state) is not dict:
        raise Refused(f"BUILD with a {type(state).__name__} state", base + pos)
    for k in state:
        if type(k) is not str:
            raise Refused("BUILD state with a non-str key", base + pos)
    vm.nest(obj, state.values(), base + pos)
    obj.state.update(state)  # __dict__.update: later changes to `state` do not leak in
    name = state.get("name")
    if not vm.fast_ranges and type(name) is str:
        # Objects built before the first fast run precede it in the reader's table (the
        # SDK's first object per pickle): offsetting the stage's name ends by their names
        # lets the reader copy a clean run's ends without rewriting them.
        vm.name_base += len(name.encode("utf-8", "surrogatepass"))
    return pos + 1


DISPATCH = {
    0x80: op_proto,
    ord("N"): _const(None), 0x88: _const(True), 0x89: _const(False),
    ord("K"): _int_op(1, False), ord("M"): _int_op(2, False), ord("J"): _int_op(4, True),
    0x8A: _long(2, _b1), 0x8B: _long(5, _b4),
    ord("G"): op_float,
    0x8C: _unicode(2, _b1), ord("X"): _unicode(5, _b4), 0x8D: _unicode(9, _b8),
    ord("C"): _bytes(2, _b1), ord("B"): _bytes(5, _b4), 0x8E: _bytes(9, _b8),
    0x96: _bytes(9, _b8),  # BYTEARRAY8: kept as bytes, nothing here mutates it
    ord("]"): _empty(list), ord(")"): _const(()), ord("}"): _empty(dict),
    ord("("): op_mark, ord("0"): op_pop, ord("1"): op_pop_mark, ord("2"): op_dup,
    ord("h"): _get(2, _b1), ord("j"): _get(5, _b4),
    ord("q"): _put(2, _b1), ord("r"): _put(5, _b4), 0x94: op_memoize,
    0x85: _tuple_n(1), 0x86: _tuple_n(2), 0x87: _tuple_n(3), ord("t"): op_tuple,
    ord("l"): op_list, ord("d"): op_dict,
    ord("s"): op_setitem, ord("u"): op_setitems, ord("a"): op_append, ord("e"): op_appends,
    ord("c"): op_global, 0x93: op_stack_global,
    0x81: op_newobj, 0x92: op_newobj_ex, ord("b"): op_build,
}

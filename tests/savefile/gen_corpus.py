#!/usr/bin/env python3
"""Writes the seed corpus of savefile_fuzz: small libvirt save files (docs/savefile.md).
Usage: gen_corpus.py DIR"""
import os
import struct
import sys

PAGE = 4096


def s8(b):
    return bytes([len(b)]) + b


def header(magic, region_len, cookie_off, fmt=0):
    return magic + struct.pack("<5I", 2, region_len, 0, fmt, cookie_off) + b"\0" * 56


def region(xml, cookie, size):
    r = xml + b"\0" + (cookie + b"\0" if cookie else b"")
    return r + b"\0" * (size - len(r))


def stream(blocks, pages, caps=(), commands=(), page_bits=None, uuid=False, footers=True):
    st = b"QEVM" + struct.pack(">I", 3)
    st += b"\x07" + struct.pack(">I", 2) + b"pc"
    if page_bits is not None:
        st += b"\x05" + s8(b"configuration/target-page-bits") + struct.pack(">II", 1, page_bits)
    if caps:
        st += b"\x05" + s8(b"configuration/capabilities") + struct.pack(">II", 1, len(caps))
        st += b"".join(s8(c) for c in caps)
    if uuid:
        st += b"\x05" + s8(b"configuration/uuid") + struct.pack(">I", 1) + bytes(range(16))
    for cmd, data in commands:
        st += b"\x08" + struct.pack(">HH", cmd, len(data)) + data
    foot = (lambda i: b"\x7e" + struct.pack(">I", i)) if footers else (lambda i: b"")
    st += b"\x01" + struct.pack(">I", 2) + s8(b"ram") + struct.pack(">II", 0, 4)
    st += struct.pack(">Q", sum(l for _, l in blocks) | 0x04)
    for n, l in blocks:
        st += s8(n) + struct.pack(">Q", l)
        if b"x-ignore-shared" in caps:
            st += struct.pack(">Q", 0x100000)
    st += struct.pack(">Q", 0x10) + foot(2)
    st += b"\x02" + struct.pack(">I", 2)
    last = None
    for blk, off, kind, data in pages:
        cont = 0x20 if blk == last else 0
        st += struct.pack(">Q", off | kind | cont) + (b"" if cont else s8(blk))
        st += data
        last = blk
    st += struct.pack(">Q", 0x10) + foot(2)
    st += b"\x03" + struct.pack(">I", 2) + struct.pack(">Q", 0x10) + foot(2)
    st += b"\x04" + struct.pack(">I", 3) + s8(b"timer") + struct.pack(">II", 0, 2) + b"\x01" * 24 + foot(3)
    desc = b'{"page_size": 4096, "devices": []}'
    st += b"\x00\x06" + struct.pack(">I", len(desc)) + desc
    return st


def save(st, magic=b"LibvirtQemudSave", cookie=b"<cookie/>", fmt=0):
    xml = b"<domain><name>f</name></domain>"
    reg = region(xml, cookie, 64)
    h = header(magic, len(reg), len(xml) + 1 if cookie else 0, fmt)
    out = h + reg + st
    if magic == b"LibvirtQemudPart":
        out += header(b"LibvirtQemudSave", len(reg), len(xml) + 1 if cookie else 0, fmt)
    return out


BLOCKS = [(b"pc.ram", 3 * PAGE), (b"pc.rom", PAGE)]
PAGES = [(b"pc.ram", 0, 0x08, b"\x11" * PAGE), (b"pc.ram", 2 * PAGE, 0x02, b"\x00"),
         (b"pc.ram", 0, 0x02, b"\x5a"), (b"pc.rom", 0, 0x08, bytes(range(256)) * 16)]


def main(out):
    os.makedirs(out, exist_ok=True)
    files = {
        "valid": save(stream(BLOCKS, PAGES)),
        "valid_no_cookie": save(stream(BLOCKS, PAGES), cookie=None),
        "fifo_style": save(stream(BLOCKS, PAGES), magic=b"LibvirtQemudPart"),
        "config_subsections": save(stream(BLOCKS, PAGES, caps=(b"x-ignore-shared",), page_bits=12, uuid=True)),
        "commands": save(stream(BLOCKS, PAGES, commands=((1, b""), (2, b"\0\0\0\1"),
                                                         (3, struct.pack(">QQ", PAGE, PAGE))))),
        "no_footers": save(stream(BLOCKS, PAGES, footers=False)),
        "xbzrle": save(stream(BLOCKS, [(b"pc.ram", 0, 0x40, b"\0\0\4\1\2\3\4")])),
        "gzip": save(stream(BLOCKS, PAGES), fmt=1),
    }
    valid = files["valid"]
    for cut in (50, 92, 150, 170, 200, 4000, len(valid) - 40, len(valid) - 1):
        files["truncated_%d" % cut] = valid[:cut]
    for name, data in files.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main(sys.argv[1])

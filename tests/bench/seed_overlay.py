#!/usr/bin/env python3
"""The VM-synthesis paper's optimized overlay (Ha et al., MobiSys 2013), as a baseline.

usage:
  seed_overlay.py flatten SAVE OUT_RAM OUT_STATE
  seed_overlay.py encode --base-disk D --base-ram R --custom-disk D --custom-ram R
                         --custom-state S --out OVERLAY.xz [--jobs N] [--json]
  seed_overlay.py decode --base-disk D --base-ram R --overlay OVERLAY.xz --out DIR [--jobs N]
                         [--json]

flatten: lays every RAM page of a libvirt save file (QEMU 7.2 migration stream, see
docs/savefile.md) at its place in one flat image, the RAM blocks one after the other in the
order of the stream's block list, and writes every other byte of the file (libvirt header, XML,
device state) to OUT_STATE. The seed system kept its memory snapshot flat in the same way.

encode: the seed's optimized method. Every 4 KiB chunk of the custom disk and of the custom RAM
image that differs from the base's chunk at the same place is, in this order of preference:
  - zero                         -> a ZERO record
  - the same as a chunk anywhere in the base disk, the base memory, or earlier in the custom
    VM itself (dedup)            -> a REF record naming it
  - otherwise, when the base chunk at the same place is not zero and `xdelta3 -e -9` of the
    chunk against it is smaller than 4096 bytes -> an XDELTA record
  - otherwise                    -> a RAW record (the 4096 bytes)
plus the custom VM's non-RAM memory bytes (state) as they are. The record stream is then
compressed with `xz -9`. Chunks equal to the base at the same place cost nothing.

decode: xz -d, copy the base images, and apply the records (`xdelta3 -d` per XDELTA record,
run on N threads), writing OUT/custom.disk (sparse) and OUT/custom.ram and OUT/custom.state.
"""
import argparse
import concurrent.futures
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

CHUNK = 4096
ZERO = bytes(CHUNK)
MAGIC = b"SEEDOV01"
XDELTA_ENC = ["xdelta3", "-e", "-9", "-A", "-n", "-B", "524288", "-W", "16384", "-c"]
XDELTA_DEC = ["xdelta3", "-d", "-B", "524288", "-W", "16384", "-c"]


# ---- save file -> flat RAM image + the rest --------------------------------------------------

def flatten(save, out_ram, out_state):
    with open(save, "rb") as f:
        data = f.read()
    mv = memoryview(data)
    if data[:16] not in (b"LibvirtQemudSave", b"LibvirtQemudPart"):
        raise SystemExit(f"{save}: not a libvirt save file")
    data_len = struct.unpack_from("<I", data, 20)[0]
    stream = 92 + data_len
    if data[stream:stream + 4] != b"QEVM":
        raise SystemExit(f"{save}: no QEMU stream at {stream}")
    # The ram START section: type 0x01, u32 id, str8 "ram", u32 instance, u32 version 4.
    pat = b"\x03ram\x00\x00\x00\x00\x00\x00\x00\x04"
    at = data.find(pat, stream, stream + 65536)
    if at < 0 or data[at - 5] != 0x01:
        raise SystemExit(f"{save}: no ram START section")
    start_sec = at - 5
    ram_id = struct.unpack_from(">I", data, at - 4)[0]
    p = at + len(pat)
    blocks = []  # (name, length)
    offsets = {}
    total = 0
    ram = None
    cur = None
    state_parts = []
    last = 0  # start of the bytes not yet given to the state
    while True:
        rec = p
        v = struct.unpack_from(">Q", data, p)[0]
        p += 8
        flags = v & 0xFFF
        addr = v & ~0xFFF
        if flags & 0x04:  # MEM_SIZE: the block list
            want = addr
            got = 0
            while got < want:
                n = data[p]
                name = data[p + 1:p + 1 + n].decode()
                p += 1 + n
                ln = struct.unpack_from(">Q", data, p)[0]
                p += 8
                offsets[name] = total
                blocks.append((name, ln))
                total += ln
                got += ln
            ram = bytearray(total)
            continue
        if flags & 0x10:  # EOS: a footer (0x7e, u32 id) may follow, then the next section
            q = p
            if data[q] == 0x7E:
                q += 5
            if data[q] in (0x02, 0x03) and struct.unpack_from(">I", data, q + 1)[0] == ram_id:
                p = q + 5  # another ram PART/END section: its records follow
                continue
            break  # device state and the rest
        if flags & 0x08 or flags & 0x02:
            if not flags & 0x20:
                n = data[p]
                cur = data[p + 1:p + 1 + n].decode()
                p += 1 + n
            off = offsets[cur] + addr
            state_parts.append(mv[last:rec])
            if flags & 0x08:
                ram[off:off + CHUNK] = mv[p:p + CHUNK]
                p += CHUNK
            else:
                ram[off:off + CHUNK] = bytes([data[p]]) * CHUNK
                p += 1
            last = p
            continue
        raise SystemExit(f"{save}: unsupported RAM record flags {flags:#x} at {rec}")
    state_parts.append(mv[last:])
    with open(out_ram, "wb") as f:
        f.write(ram)
    with open(out_state, "wb") as f:
        for part in state_parts:
            f.write(part)
    return {"ram_bytes": total, "blocks": blocks}


# ---- encode -----------------------------------------------------------------------------------

def chunks_of(path, sparse):
    """Yields (index, bytes) of every chunk that may be non-zero (holes skipped when sparse)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        fd = f.fileno()
        pos = 0
        while pos < size:
            if sparse:
                try:
                    pos = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError:
                    return
                end = os.lseek(fd, pos, os.SEEK_HOLE)
            else:
                end = size
            pos -= pos % CHUNK
            os.lseek(fd, pos, os.SEEK_SET)
            while pos < end:
                buf = f.read(min(1 << 22, end - pos + CHUNK - 1) // CHUNK * CHUNK or CHUNK)
                if not buf:
                    return
                for i in range(0, len(buf), CHUNK):
                    c = buf[i:i + CHUNK]
                    if len(c) < CHUNK:
                        c = c + bytes(CHUNK - len(c))
                    yield (pos + i) // CHUNK, c
                pos += len(buf)


def h(c):
    return hashlib.blake2b(c, digest_size=16).digest()


def read_chunk(f, idx):
    f.seek(idx * CHUNK)
    c = f.read(CHUNK)
    return c + bytes(CHUNK - len(c))


def xdelta_encode(tmpdir, src, tgt):
    fd, name = tempfile.mkstemp(dir=tmpdir)
    try:
        os.write(fd, src)
        os.close(fd)
        r = subprocess.run(XDELTA_ENC + ["-s", name], input=tgt, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, check=True)
        return r.stdout
    finally:
        os.unlink(name)


def encode(a):
    t0 = time.monotonic()
    stats = {"disk": {}, "memory": {}}
    index = {}  # hash -> (source, chunk index); sources 0 base disk, 1 base ram, 2/3 custom
    for src, path, sparse in ((0, a.base_disk, True), (1, a.base_ram, True)):
        for i, c in chunks_of(path, sparse):
            if c != ZERO:
                index.setdefault(h(c), (src, i))
    t_index = time.monotonic() - t0
    tmpdir = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    pool = concurrent.futures.ThreadPoolExecutor(a.jobs)
    records = []  # in order: (image, idx, kind, payload or future)
    for img, (bpath, cpath, name) in enumerate(((a.base_disk, a.custom_disk, "disk"),
                                                 (a.base_ram, a.custom_ram, "memory"))):
        st = stats[name]
        for k in ("chunks", "changed", "zero", "dedup_base_disk", "dedup_base_memory",
                  "dedup_self", "xdelta", "raw", "xdelta_tried"):
            st[k] = 0
        csize = os.path.getsize(cpath)
        st["chunks"] = (csize + CHUNK - 1) // CHUNK
        with open(bpath, "rb") as bf:
            bsize = os.path.getsize(bpath)
            # every chunk of the custom image that may differ: its data, and the base's data
            # where the custom image has a hole
            cdata = dict(chunks_of(cpath, True))
            bidx = set(i for i, _ in chunks_of(bpath, True))
            for i in sorted(set(cdata) | bidx):
                c = cdata.get(i, ZERO)
                b = read_chunk(bf, i) if i * CHUNK < bsize else ZERO
                if c == b:
                    continue
                st["changed"] += 1
                if c == ZERO:
                    st["zero"] += 1
                    records.append((img, i, 0, None))
                    continue
                hc = h(c)
                ref = index.get(hc)
                if ref is not None:
                    st[("dedup_base_disk", "dedup_base_memory", "dedup_self", "dedup_self")[ref[0]]] += 1
                    records.append((img, i, 1, struct.pack("<BQ", *ref)))
                    continue
                index[hc] = (2 + img, i)
                if b != ZERO:
                    st["xdelta_tried"] += 1
                    records.append((img, i, 2, (pool.submit(xdelta_encode, tmpdir, b, c), c)))
                else:
                    st["raw"] += 1
                    records.append((img, i, 3, c))
    t_scan = time.monotonic() - t0
    with open(a.custom_state, "rb") as f:
        state = f.read()
    raw_path = a.out + ".raw"
    raw_bytes = 0
    with open(raw_path, "wb") as out:
        out.write(MAGIC + struct.pack("<QQ", os.path.getsize(a.custom_disk),
                                      os.path.getsize(a.custom_ram)))
        for img, i, kind, payload in records:
            if kind == 2:
                fut, c = payload
                d = fut.result()
                if len(d) < CHUNK:
                    stats[("disk", "memory")[img]]["xdelta"] += 1
                    out.write(struct.pack("<BQBI", img, i, 2, len(d)) + d)
                    continue
                stats[("disk", "memory")[img]]["raw"] += 1
                kind, payload = 3, c
            if kind == 0:
                out.write(struct.pack("<BQB", img, i, 0))
            elif kind == 1:
                out.write(struct.pack("<BQB", img, i, 1) + payload)
            else:
                out.write(struct.pack("<BQB", img, i, 3) + payload)
        out.write(struct.pack("<BQBI", 255, 0, 4, len(state)) + state)
        raw_bytes = out.tell()
    pool.shutdown()
    shutil.rmtree(tmpdir, ignore_errors=True)
    t_delta = time.monotonic() - t0
    subprocess.run(["xz", "-9", "-T1", "-f", "-k", raw_path], check=True)
    os.replace(raw_path + ".xz", a.out)
    os.unlink(raw_path)
    t_all = time.monotonic() - t0
    res = {"overlay_bytes": os.path.getsize(a.out), "stream_bytes": raw_bytes,
           "state_bytes": len(state), "disk": stats["disk"], "memory": stats["memory"],
           "time_index_s": round(t_index, 3), "time_scan_s": round(t_scan - t_index, 3),
           "time_xdelta_s": round(t_delta - t_scan, 3), "time_xz_s": round(t_all - t_delta, 3),
           "time_total_s": round(t_all, 3)}
    print(json.dumps(res) if a.json else json.dumps(res, indent=1))


# ---- decode -----------------------------------------------------------------------------------

def xdelta_decode(tmpdir, src, delta):
    fd, name = tempfile.mkstemp(dir=tmpdir)
    try:
        os.write(fd, src)
        os.close(fd)
        r = subprocess.run(XDELTA_DEC + ["-s", name], input=delta, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, check=True)
        return r.stdout
    finally:
        os.unlink(name)


def decode(a):
    t0 = time.monotonic()
    stream = subprocess.run(["xz", "-d", "-c", a.overlay], stdout=subprocess.PIPE,
                            check=True).stdout
    t_xz = time.monotonic() - t0
    if stream[:8] != MAGIC:
        raise SystemExit("not a seed overlay")
    disk_len, ram_len = struct.unpack_from("<QQ", stream, 8)
    os.makedirs(a.out, exist_ok=True)
    out_disk = os.path.join(a.out, "custom.disk")
    out_ram = os.path.join(a.out, "custom.ram")
    subprocess.run(["cp", "--sparse=always", a.base_disk, out_disk], check=True)
    subprocess.run(["cp", "--sparse=always", a.base_ram, out_ram], check=True)
    os.truncate(out_disk, disk_len)
    os.truncate(out_ram, ram_len)
    t_copy = time.monotonic() - t0
    tmpdir = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    pool = concurrent.futures.ThreadPoolExecutor(a.jobs)
    files = [open(a.base_disk, "rb"), open(a.base_ram, "rb"), open(out_disk, "r+b"),
             open(out_ram, "r+b")]
    pending = []
    selfrefs = []
    p = 24
    n = len(stream)
    counts = [0, 0, 0, 0]
    while p < n:
        img, i, kind = struct.unpack_from("<BQB", stream, p)
        p += 10
        if kind == 4:
            ln = struct.unpack_from("<I", stream, p)[0]
            p += 4
            with open(os.path.join(a.out, "custom.state"), "wb") as f:
                f.write(stream[p:p + ln])
            p += ln
            continue
        counts[kind] += 1
        dst = files[2 + img]
        if kind == 0:
            dst.seek(i * CHUNK)
            dst.write(ZERO)
        elif kind == 1:
            src, j = struct.unpack_from("<BQ", stream, p)
            p += 9
            if src >= 2:  # the custom VM's own chunk: applied once the deltas are
                selfrefs.append((img, i, src, j))
                continue
            dst.seek(i * CHUNK)
            dst.write(read_chunk(files[src], j))
        elif kind == 2:
            ln = struct.unpack_from("<I", stream, p)[0]
            p += 4
            d = stream[p:p + ln]
            p += ln
            b = read_chunk(files[img], i)
            pending.append((img, i, pool.submit(xdelta_decode, tmpdir, b, d)))
        else:
            dst.seek(i * CHUNK)
            dst.write(stream[p:p + CHUNK])
            p += CHUNK
    for img, i, fut in pending:
        dst = files[2 + img]
        dst.seek(i * CHUNK)
        dst.write(fut.result())
    # a chunk of the custom VM that repeats one of its own (always a RAW or XDELTA one)
    for img, i, src, j in selfrefs:
        files[src].flush()
        c = read_chunk(files[src], j)
        files[2 + img].seek(i * CHUNK)
        files[2 + img].write(c)
    t_apply = time.monotonic() - t0
    for f in files:
        f.close()
    pool.shutdown()
    shutil.rmtree(tmpdir, ignore_errors=True)
    t_all = time.monotonic() - t0
    res = {"time_xz_s": round(t_xz, 3), "time_copy_base_s": round(t_copy - t_xz, 3),
           "time_apply_s": round(t_apply - t_copy, 3), "time_total_s": round(t_all, 3),
           "records": {"zero": counts[0], "ref": counts[1], "xdelta": counts[2], "raw": counts[3]}}
    print(json.dumps(res) if a.json else json.dumps(res, indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flatten")
    f.add_argument("save")
    f.add_argument("out_ram")
    f.add_argument("out_state")
    e = sub.add_parser("encode")
    for k in ("base-disk", "base-ram", "custom-disk", "custom-ram", "custom-state", "out"):
        e.add_argument("--" + k, required=True)
    e.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    e.add_argument("--json", action="store_true")
    d = sub.add_parser("decode")
    for k in ("base-disk", "base-ram", "overlay", "out"):
        d.add_argument("--" + k, required=True)
    d.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    d.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.cmd == "flatten":
        print(json.dumps(flatten(a.save, a.out_ram, a.out_state)))
    elif a.cmd == "encode":
        encode(a)
    else:
        decode(a)


if __name__ == "__main__":
    sys.exit(main())

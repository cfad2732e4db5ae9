#!/usr/bin/env python3
"""Scaffold .proto files from the wire-contract tables in shared/contracts/*.md.

We ran this once to write proto/proto/**; the files are checked in and owned by us
from then on. The Rust test `proto/tests/contract.rs` re-reads the tables and checks
the compiled descriptors against them, so any drift fails CI whichever way it came.

usage: contract_to_proto.py CONTRACTS_DIR OUT_DIR
"""
import os
import re
import sys

SCALARS = {
    "double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64",
    "fixed32", "fixed64", "sfixed32", "sfixed64", "bool", "string", "bytes",
}


def qualify(t):
    t = t.strip()
    m = re.match(r"map<\s*([\w.]+)\s*,\s*([\w.]+)\s*>", t)
    if m:
        return f"map<{qualify(m.group(1))}, {qualify(m.group(2))}>"
    return t if t in SCALARS else "." + t


def parse(path):
    files = []
    cur = None
    lines = open(path).read().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"## file `([^`]+)` — package `([^`]+)`", line)
        if m:
            cur = {"path": m.group(1), "package": m.group(2), "imports": [],
                   "services": [], "types": []}
            files.append(cur)
        elif line.startswith("imports:"):
            cur["imports"] = re.findall(r"`([^`]+)`", line)
        elif line.startswith("### service"):
            name = re.search(r"`([^`]+)`", line).group(1)
            rpcs = []
            i += 4
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip().strip("`") for c in lines[i].strip("|").split("|")]
                rpcs.append(cells)
                i += 1
            cur["services"].append((name, rpcs))
            continue
        elif line.startswith("**enum"):
            name = re.search(r"`([^`]+)`", line).group(1)
            values = [v.strip().split("=") for v in line.split("**:", 1)[1].split(",")]
            cur["types"].append(("enum", name, values))
        elif line.startswith("**message"):
            name = re.search(r"`([^`]+)`", line).group(1)
            fields = []
            if "(no fields)" not in line:
                i += 4
                while i < len(lines) and lines[i].startswith("|"):
                    cells = [c.strip() for c in lines[i].strip("|").split("|")]
                    fields.append((cells[0], cells[1].strip("`"), cells[2].strip("`"), cells[3]))
                    i += 1
            cur["types"].append(("message", name, fields))
            if "(no fields)" not in line:
                continue
        i += 1
    return files


def render_type(kind, name, body, children, indent):
    pad = "  " * indent
    short = name.rsplit(".", 1)[1]
    out = []
    if kind == "enum":
        out.append(f"{pad}enum {short} {{")
        for v, n in body:
            out.append(f"{pad}  {v} = {n};")
        out.append(f"{pad}}}")
        return out
    out.append(f"{pad}message {short} {{")
    for c in children:
        out.extend(render_type(*c, indent + 1))
    oneofs = {}
    order = []
    for num, fname, ftype, label in body:
        m = re.match(r"oneof `?(\w+)`?", label)
        if m:
            key = ("oneof", m.group(1))
            if key not in oneofs:
                oneofs[key] = []
                order.append(key)
            oneofs[key].append((num, fname, ftype))
        else:
            order.append(("field", (num, fname, ftype, label)))
    for item in order:
        if item[0] == "oneof":
            out.append(f"{pad}  oneof {item[1]} {{")
            for num, fname, ftype in oneofs[item]:
                out.append(f"{pad}    {qualify(ftype)} {fname} = {num};")
            out.append(f"{pad}  }}")
        else:
            num, fname, ftype, label = item[1]
            prefix = f"{label} " if label in ("optional", "repeated") else ""
            out.append(f"{pad}  {prefix}{qualify(ftype)} {fname} = {num};")
    out.append(f"{pad}}}")
    return out


def render(f):
    out = [f"// Wire contract of `{f['package']}`: names, numbers and types follow",
           "// shared/contracts exactly (checked by proto/tests/contract.rs).",
           'syntax = "proto3";', "", f"package {f['package']};", ""]
    for imp in f["imports"]:
        out.append(f'import "{imp}";')
    if f["imports"]:
        out.append("")
    for sname, rpcs in f["services"]:
        out.append(f"service {sname.rsplit('.', 1)[1]} {{")
        for rpc, req, resp in rpcs:
            def arg(a):
                if a.startswith("stream "):
                    return "stream " + qualify(a[len("stream "):])
                return qualify(a)
            out.append(f"  rpc {rpc}({arg(req)}) returns ({arg(resp)});")
        out.append("}")
        out.append("")
    names = {t[1] for t in f["types"]}
    children = {}
    top = []
    for t in f["types"]:
        parent = t[1].rsplit(".", 1)[0]
        if parent in names:
            children.setdefault(parent, []).append(t)
        else:
            top.append(t)

    def tree(t):
        return (t[0], t[1], t[2], [tree(c) for c in children.get(t[1], [])])

    for t in top:
        out.extend(render_type(*tree(t), 0))
        out.append("")
    return "\n".join(out)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    for md in sorted(os.listdir(src)):
        if not md.endswith(".md"):
            continue
        for f in parse(os.path.join(src, md)):
            path = os.path.join(dst, f["path"])
            os.makedirs(os.path.dirname(path) or dst, exist_ok=True)
            with open(path, "w") as fh:
                fh.write(render(f))
            print(path)


if __name__ == "__main__":
    main()

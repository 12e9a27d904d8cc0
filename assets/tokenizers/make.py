#!/usr/bin/env python3
"""Writes the token vocabularies Tollgate counts with, from tiktoken's published files.

    python3 assets/tokenizers/make.py DIR

DIR holds `o200k_base.tiktoken` and `cl100k_base.tiktoken` (one "base64-bytes rank" line per
token, ranks 0, 1, 2, … in order), e.g. the `assets` folder of the tiktoken-rs crate. Each
`NAME.vocab` written here is every token's bytes in rank order, each preceded by its length in
one byte (no token is longer than 255 bytes). `src/gateway/tokens/bpe.rs` reads them;
its tests check them token by token against tiktoken-rs.
"""
import base64
import os
import sys

src = sys.argv[1]
here = os.path.dirname(os.path.abspath(__file__))
for name in ["o200k_base", "cl100k_base"]:
    out = bytearray()
    with open(os.path.join(src, name + ".tiktoken")) as f:
        for expected, line in enumerate(f):
            b64, rank = line.split()
            if int(rank) != expected:
                sys.exit(f"{name}: rank {rank} on line {expected + 1}")
            token = base64.b64decode(b64)
            if not 0 < len(token) < 256:
                sys.exit(f"{name}: token {rank} is {len(token)} bytes")
            out.append(len(token))
            out += token
    with open(os.path.join(here, name + ".vocab"), "wb") as f:
        f.write(out)
    print(f"{name}.vocab: {expected + 1} tokens, {len(out)} bytes")

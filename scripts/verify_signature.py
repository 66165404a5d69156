#!/usr/bin/env python3
"""Checks a signed p2ptrain contribution with PyNaCl, independently of the Rust code.

Usage: python3 scripts/verify_signature.py [FIXTURE.hex]
Needs: pip install pynacl blake3
Follows docs/protocol.md section 4: parse the envelope, verify the ed25519
signature over DOMAIN || body, print the contribution id (blake3 of the body).
"""
import sys

import blake3
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

DOMAIN = b"p2ptrain/v1/contribution\0"


def varint(buf, at):
    first = buf[at]
    if first < 251:
        return first, at + 1
    width = {251: 2, 252: 4, 253: 8}[first]
    return int.from_bytes(buf[at + 1 : at + 1 + width], "little"), at + 1 + width


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "protocol/tests/fixtures/signed_contribution.hex"
    wire = bytes.fromhex(open(path).read().strip())
    assert wire[0] == 1, f"unknown format version {wire[0]}"
    n, at = varint(wire, 1)
    body, signer, sig = wire[at : at + n], wire[at + n : at + n + 32], wire[at + n + 32 : at + n + 96]
    assert at + n + 96 == len(wire), "trailing bytes"
    VerifyKey(signer).verify(DOMAIN + body, sig)
    tampered = bytearray(body)
    tampered[-1] ^= 1
    try:
        VerifyKey(signer).verify(DOMAIN + bytes(tampered), sig)
    except BadSignatureError:
        pass
    else:
        raise SystemExit("a tampered body verified")
    print(f"signature OK  signer {signer.hex()}  contribution id {blake3.blake3(body).hexdigest()}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Replays the golden vectors of tests/vectors/ with implementations that share no code
with meshd: the Noise handshakes and transport records with `noiseprotocol` (PyPI), the
pair key with Python's hmac, the TLS record with `cryptography`'s AES-GCM, and the
preamble, prologue and frame headers from docs/PROTOCOL.md by hand.

Run by scripts/test (which installs noiseprotocol); exits non-zero on any difference.
"""

import hashlib
import hmac
import struct
import sys
import warnings
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from noise.connection import Keypair, NoiseConnection

HERE = Path(__file__).resolve().parent
checked = 0
failed = 0


def load(name):
    values = {}
    for line in (HERE / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, value = line.split("=", 1)
        values[key.strip()] = bytes.fromhex(value.strip())
    if not values:
        sys.exit(f"{name}: no vectors")
    return values


def same(what, got, want):
    global checked, failed
    checked += 1
    if bytes(got) != bytes(want):
        failed += 1
        print(f"MISMATCH {what}:\n  got  {bytes(got).hex()}\n  want {bytes(want).hex()}")


def u16(n):
    return struct.pack(">H", n)


def pair_key(secret, mesh_id, a, b):
    """HKDF-SHA256(ikm = secret, salt = mesh_id, info = "meshd pair v1" 0 min 0 max), 32 bytes."""
    lo, hi = sorted([a, b])
    prk = hmac.new(mesh_id, secret, hashlib.sha256).digest()
    info = b"meshd pair v1" + b"\0" + lo + b"\0" + hi
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def public_key(private):
    key = X25519PrivateKey.from_private_bytes(private).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def check_handshake(file, mode):
    v = load(file)
    code = {"noise": 1, "psk": 2}[mode]
    name = {
        "noise": b"Noise_IKpsk2_25519_AESGCM_SHA256",
        "psk": b"Noise_NNpsk0_25519_AESGCM_SHA256",
    }[mode]
    mesh_id, dialer, acceptor = v["mesh_id"], v["dialer"], v["acceptor"]

    preamble = b"MSHD" + bytes([3, code, len(dialer), 0]) + dialer.ljust(64, b"\0")
    same(f"{file} preamble", v["preamble"], preamble)
    prologue = b"meshd prologue" + bytes([3, code])
    for part in (mesh_id, dialer, acceptor):
        prologue += u16(len(part)) + part
    same(f"{file} prologue", v["prologue"], prologue)
    secret = v.get("mesh_secret", bytes(32))
    same(f"{file} psk", v["psk"], pair_key(secret, mesh_id, dialer, acceptor))

    with warnings.catch_warnings():
        # noiseprotocol warns that a preset ephemeral key is for testing only: it is.
        warnings.simplefilter("ignore")
        init = NoiseConnection.from_name(name)
        init.set_as_initiator()
        resp = NoiseConnection.from_name(name)
        resp.set_as_responder()
        for conn in (init, resp):
            conn.set_psks(psk=v["psk"])
            conn.set_prologue(prologue)
        if mode == "noise":
            same(f"{file} dialer public key", v["dialer_static_public"],
                 public_key(v["dialer_static_private"]))
            same(f"{file} acceptor public key", v["acceptor_static_public"],
                 public_key(v["acceptor_static_private"]))
            init.set_keypair_from_private_bytes(Keypair.STATIC, v["dialer_static_private"])
            init.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, v["acceptor_static_public"])
            resp.set_keypair_from_private_bytes(Keypair.STATIC, v["acceptor_static_private"])
        init.set_keypair_from_private_bytes(Keypair.EPHEMERAL, v["dialer_ephemeral_private"])
        resp.set_keypair_from_private_bytes(Keypair.EPHEMERAL, v["acceptor_ephemeral_private"])
        init.start_handshake()
        resp.start_handshake()

        msg1 = init.write_message(v["timestamp"])
        same(f"{file} msg1", msg1, v["msg1"])
        same(f"{file} timestamp read by the acceptor", resp.read_message(v["msg1"]), v["timestamp"])
        msg2 = resp.write_message(b"")
        same(f"{file} msg2", msg2, v["msg2"])
        same(f"{file} msg2 payload", init.read_message(v["msg2"]), b"")
    if not (init.handshake_finished and resp.handshake_finished):
        sys.exit(f"{file}: the handshake did not finish")
    same(f"{file} dialer_writes", v["dialer_writes"], preamble + u16(len(msg1)) + msg1)
    same(f"{file} acceptor_writes", v["acceptor_writes"], u16(len(msg2)) + msg2)

    for key, tx, rx in (
        ("dialer_record_0", init, resp),
        ("dialer_record_1", init, resp),
        ("acceptor_record_0", resp, init),
    ):
        plain = v[key + "_plaintext"]
        ciphertext = tx.encrypt(plain)
        same(f"{file} {key}", u16(len(ciphertext)) + ciphertext, v[key])
        same(f"{file} {key} opened", rx.decrypt(v[key][2:]), plain)


def check_tls():
    v = load("tls_record.hex")
    record, content = v["greeting_record"], v["greeting_content"]
    header = bytes([0x17, 0x03, 0x03]) + u16(len(content) + 1 + 16)
    same("tls greeting header", record[:5], header)
    # Sequence number 0: the nonce is the IV itself.
    sealed = AESGCM(v["acceptor_tx_key"]).encrypt(v["acceptor_tx_iv"], content + b"\x17", header)
    same("tls greeting record", record, header + sealed)
    frames = load("frames.hex")
    same("tls greeting content", content, u16(len(frames["tls_greeting_frames"])) + frames["tls_greeting_frames"])


def check_frames():
    v = load("frames.hex")
    types = {
        "open": 1, "open_ok": 2, "open_err": 3, "data": 4, "window": 5, "fin": 6,
        "rst": 7, "ping": 8, "pong": 9, "goaway": 10, "settings": 11, "rekey": 12,
    }
    for key, t in types.items():
        frame = v[key]
        ty, stream, length = struct.unpack(">BQH", frame[:11])
        same(f"frames {key} type", bytes([ty]), bytes([t]))
        same(f"frames {key} length", u16(length), u16(len(frame) - 11))
        link_frame = t >= 8
        same(f"frames {key} stream 0 rule", bytes([stream == 0]), bytes([link_frame]))
    same("frames settings window", v["settings"][11:], struct.pack(">I", 262144))
    same("frames first_record", v["first_record"], v["settings"])
    # REKEY: step u8 (1 = OFFER), epoch u32, X25519 public key.
    same("frames rekey payload", v["rekey"][11:], bytes([1]) + struct.pack(">I", 1) + bytes(range(0x40, 0x60)))


def hkdf_extract(salt, ikm):
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand32(prk, info):
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def check_rekey():
    """The re-key derivation of docs/PROTOCOL.md with Python's hmac."""
    v = load("rekey.hex")
    chain0 = hkdf_expand32(hkdf_extract(v["h"], v["k1"] + v["k2"]), b"meshd rekey chain 0")
    same("rekey chain0", v["chain0"], chain0)
    prk = hkdf_extract(chain0, v["shared"])
    tail = struct.pack(">I", 1) + v["dialer_public"] + v["acceptor_public"]
    same("rekey key_d2a", v["key_d2a"], hkdf_expand32(prk, b"meshd rekey d2a" + tail))
    same("rekey key_a2d", v["key_a2d"], hkdf_expand32(prk, b"meshd rekey a2d" + tail))
    same("rekey chain1", v["chain1"], hkdf_expand32(prk, b"meshd rekey chain" + tail))


check_frames()
check_handshake("noise.hex", "noise")
check_handshake("psk.hex", "psk")
check_tls()
check_rekey()
print(f"vectors: {checked - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)

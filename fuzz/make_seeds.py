#!/usr/bin/env python3
"""Writes the seed corpora fuzz/seeds/TARGET/ from what the tests commit: the golden
vectors (tests/vectors/*.hex), the example manifest (peers/), the lint fixtures
(tests/fixtures/lint/) and the stunnel fixtures (tests/fixtures/stunnel/).

Rerun after the vectors or fixtures change: `python3 fuzz/make_seeds.py`. The input
formats are those the targets document (fuzz/fuzz_targets/*.rs).
"""

import shutil
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"


def vectors(name):
    values = {}
    for line in (ROOT / "tests" / "vectors" / name).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values[key.strip()] = bytes.fromhex(value.strip())
    assert values, name
    return values


def u16(n):
    return struct.pack(">H", n)


def frame(ty, stream, payload=b""):
    return struct.pack(">BQH", ty, stream, len(payload)) + payload


def write(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def frame_seeds(frames, noise):
    for key, value in frames.items():
        write("frame", key, value)
    write("frame", "all", b"".join(frames.values()))
    write("frame", "noise_dialer_record_1", noise["dialer_record_1_plaintext"])


# Mux target: six config bytes, then ops (op byte % 12): 0 raw record (u16 len, bytes),
# 2 accept(i), 4 consume(i, u32), 5 send(i, u16), 6 finish(i), 7 reset(i, code),
# 8 open(service), 9 goaway(reason), 10 tick(u16 ms), 11 transmit.
def raw(record):
    return bytes([0]) + u16(len(record)) + record


def mux_seeds(f):
    config = lambda acceptor: bytes([acceptor, 4, 2, 8, 7, 3])
    acceptor = (
        config(1)
        + raw(f["first_record"])
        + raw(f["zero_rtt_record"])
        + bytes([2, 0])  # accept
        + bytes([4, 0]) + struct.pack(">I", 6)  # consume
        + bytes([5, 0]) + u16(6)  # send
        + bytes([6, 0])  # finish
        + bytes([11])
        + bytes([10]) + u16(1000)
        + raw(f["ping"])
        + bytes([11])
    )
    write("mux", "acceptor_zero_rtt", acceptor)
    flood = config(1) + raw(f["first_record"]) + b"".join(
        raw(frame(1, i, b"svc")) for i in range(1, 80)
    ) + bytes([11])
    write("mux", "acceptor_open_flood", flood)
    dialer = (
        config(0)
        + bytes([8, 1])  # open "redis"
        + bytes([5, 0]) + u16(100)
        + bytes([11])
        + raw(f["first_record"])
        + raw(f["open_ok"])
        + raw(frame(4, 1, b"+PONG\r\n"))
        + bytes([4, 0]) + struct.pack(">I", 7)
        + raw(f["window"])
        + raw(f["fin"])
        + bytes([6, 0])
        + bytes([11])
        + raw(f["pong"])
        + raw(f["goaway"])
        + bytes([8, 0])
        + bytes([10]) + u16(5000)
    )
    write("mux", "dialer_stream", dialer)
    refused = config(0) + bytes([8, 0, 11]) + raw(frame(3, 1, b"\x02")) + raw(f["rst"])
    write("mux", "dialer_refused", refused)


def handshake_seeds(noise, psk):
    write("handshake", "preamble_noise", b"\x00" + noise["preamble"])
    write("handshake", "preamble_psk", b"\x00" + psk["preamble"])
    write("handshake", "msg1_noise", b"\x01" + noise["msg1"])
    write("handshake", "msg1_psk", b"\x02" + psk["msg1"])
    for n, (which, v) in enumerate((("noise", noise), ("psk", psk))):
        write(
            "handshake",
            f"msg2_{which}",
            bytes([3 + n]) + v["acceptor_writes"] + v["acceptor_record_0"],
        )


# tls_records target: a flags byte (bit 0: large records), then pieces (kind % 4):
# 0 application data record (u16 len, body), 1 record of type t (t, u16 len, body),
# 2 raw bytes (u16 len, bytes), 3 cut (u16).
def tls_seeds(tls, f):
    data = lambda body: bytes([0]) + u16(len(body)) + body
    write("tls_records", "greeting", b"\x00" + data(tls["greeting_content"]))
    mux = u16(len(f["zero_rtt_record"])) + f["zero_rtt_record"]
    split = b"\x00" + data(mux[:1]) + data(mux[1:9]) + data(mux[9:]) + bytes([3]) + u16(3)
    write("tls_records", "spanning", split)
    big = frame(4, 1, bytes(range(256)) * 60)
    big_mux = u16(len(big)) + big
    write("tls_records", "large", b"\x01" + data(big_mux))
    write("tls_records", "close_notify", b"\x00" + data(mux) + bytes([1, 0x15]) + u16(2) + b"\x01\x00")


def manifest_seeds():
    def pack(d):
        parts = [(d / "mesh.toml").read_text()]
        for p in sorted(d.glob("*.toml")):
            if p.name != "mesh.toml":
                parts.append(f"%%% {p.name}\n" + p.read_text())
        return "".join(part if part.endswith("\n") else part + "\n" for part in parts)

    write("manifest", "peers", pack(ROOT / "peers"))
    lint = sorted((ROOT / "tests" / "fixtures" / "lint").glob("*/*"))
    assert lint, "no lint fixtures"
    for d in lint:
        write("manifest", f"lint-{d.parent.name}-{d.name}", pack(d))


def host_seeds():
    write("host_config", "minimal", 'name = "off2"\nmanifest = "peers"\nkey = "host.key"\n')
    write(
        "host_config",
        "full",
        'name = "off2"\nmanifest = "/opt/infra/peers"\nkey = "/etc/meshd/host.key"\n'
        'listen = "[::]:7443"\nadmin = "127.0.0.1:9464"\nmesh_secret = "mesh.secret"\n'
        'state_dir = "/var/lib/meshd"\ncert = "off2.crt"\ncert_key = "off2.key"\n'
        'ca = "ca.crt"\nbusy_poll_us = 200\n',
    )
    write("host_config", "partial_tls", 'name = "a"\nmanifest = ""\nkey = "k"\ncert = "c"\n')


def stunnel_seeds():
    d = ROOT / "tests" / "fixtures" / "stunnel"
    hosts = ["off1", "off2", "moji", "ovh1"]
    text = (d / "off1.conf").read_text()
    for h in hosts[1:]:
        text += f"%%% {h}\n" + (d / f"{h}.conf").read_text()
    text += "%%% psk\n" + (d / "psk" / "off2-redis.txt").read_text()
    write("stunnel", "fleet", text)
    for h in hosts:
        write("stunnel", h, (d / f"{h}.conf").read_text())
    write("stunnel", "off2.d-redis", (d / "off2.d" / "redis.conf").read_text())


shutil.rmtree(SEEDS, ignore_errors=True)
frames = vectors("frames.hex")
noise = vectors("noise.hex")
frame_seeds(frames, noise)
mux_seeds(frames)
handshake_seeds(noise, vectors("psk.hex"))
tls_seeds(vectors("tls_record.hex"), frames)
manifest_seeds()
host_seeds()
stunnel_seeds()
for t in sorted(SEEDS.iterdir()):
    print(f"{t.name}: {len(list(t.iterdir()))} seeds")

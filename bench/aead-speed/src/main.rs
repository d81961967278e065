//! Seal + open throughput of one record size with ring and with aws-lc-rs, for each AEAD a
//! meshd link may run (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305), on this CPU. The two
//! libraries alternate round by round, so a noisy host hits both alike; the report gives
//! each round's GB/s and the median ratio aws-lc-rs / ring.
//!
//! `cargo run --release --manifest-path bench/aead-speed/Cargo.toml -- [ROUNDS] [MIB_PER_ROUND]`

use std::time::Instant;

const NONCE: [u8; 12] = [7; 12];

/// Both libraries do what a meshd record layer does per record: seal the content in place
/// with a separate tag written after it, then open `ciphertext ‖ tag` in place.
trait Aead {
    /// Seals `buf[..len - 16]` in place, its tag into the last 16 bytes, then opens the
    /// whole of `buf` in place; returns false on any failure.
    fn seal_open(&self, buf: &mut [u8]) -> bool;
}

const AAD: [u8; 5] = [0x17, 3, 3, 0, 0];

struct Ring(ring::aead::LessSafeKey);

impl Aead for Ring {
    fn seal_open(&self, buf: &mut [u8]) -> bool {
        use ring::aead::{Aad, Nonce};
        let n = buf.len() - 16;
        let Ok(tag) = self.0.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(NONCE),
            Aad::from(AAD),
            &mut buf[..n],
        ) else {
            return false;
        };
        buf[n..].copy_from_slice(tag.as_ref());
        self.0
            .open_in_place(Nonce::assume_unique_for_key(NONCE), Aad::from(AAD), buf)
            .is_ok()
    }
}

struct AwsLc(aws_lc_rs::aead::LessSafeKey);

impl Aead for AwsLc {
    fn seal_open(&self, buf: &mut [u8]) -> bool {
        use aws_lc_rs::aead::{Aad, Nonce};
        let n = buf.len() - 16;
        let Ok(tag) = self.0.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(NONCE),
            Aad::from(AAD),
            &mut buf[..n],
        ) else {
            return false;
        };
        buf[n..].copy_from_slice(tag.as_ref());
        self.0
            .open_in_place(Nonce::assume_unique_for_key(NONCE), Aad::from(AAD), buf)
            .is_ok()
    }
}

fn gbps(aead: &dyn Aead, record: usize, bytes: usize) -> f64 {
    let mut buf = vec![0x5Au8; record + 16];
    let n = bytes / record;
    let start = Instant::now();
    for _ in 0..n {
        assert!(aead.seal_open(&mut buf), "seal or open failed");
    }
    (n * record) as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(7);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(512);
    let key = [0x42u8; 32];
    let suites: [(
        &str,
        &'static ring::aead::Algorithm,
        &'static aws_lc_rs::aead::Algorithm,
    ); 3] = [
        (
            "AES-128-GCM",
            &ring::aead::AES_128_GCM,
            &aws_lc_rs::aead::AES_128_GCM,
        ),
        (
            "AES-256-GCM",
            &ring::aead::AES_256_GCM,
            &aws_lc_rs::aead::AES_256_GCM,
        ),
        (
            "ChaCha20-Poly1305",
            &ring::aead::CHACHA20_POLY1305,
            &aws_lc_rs::aead::CHACHA20_POLY1305,
        ),
    ];
    println!("| AEAD | record | ring GB/s (median) | aws-lc-rs GB/s (median) | aws-lc-rs / ring per round | median ratio |");
    println!("|---|---|---|---|---|---|");
    for (name, r_alg, a_alg) in suites {
        let klen = r_alg.key_len();
        let ring_key = Ring(ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(r_alg, &key[..klen]).expect("ring key"),
        ));
        let aws_key = AwsLc(aws_lc_rs::aead::LessSafeKey::new(
            aws_lc_rs::aead::UnboundKey::new(a_alg, &key[..klen]).expect("aws-lc key"),
        ));
        for record in [16 * 1024, 64 * 1024 - 17] {
            let bytes = mib << 20;
            // Warm both up once.
            gbps(&ring_key, record, bytes / 8);
            gbps(&aws_key, record, bytes / 8);
            let (mut r, mut a, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..rounds {
                let x = gbps(&ring_key, record, bytes);
                let y = gbps(&aws_key, record, bytes);
                r.push(x);
                a.push(y);
                ratios.push(y / x);
            }
            let per_round: Vec<String> = ratios.iter().map(|q| format!("{q:.2}")).collect();
            println!(
                "| {name} | {record} | {:.2} | {:.2} | {} | {:.2} |",
                median(r),
                median(a),
                per_round.join(", "),
                median(ratios)
            );
        }
    }
}

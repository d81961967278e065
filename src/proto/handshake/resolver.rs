//! The crypto of the Noise handshakes: snow's own (AES-GCM and SHA-256 on ring, X25519 on
//! curve25519-dalek), with one check snow leaves out: an X25519 result of all zeros fails
//! the handshake. A peer that sends a point of small order as its ephemeral (or static)
//! key makes every DH with it all zeros, which would leave the handshake's secrecy to the
//! other DHs and the psk alone; RFC 7748 §6.1 says to check for it. (The re-keys of a
//! live link use ring's X25519, which refuses it itself.)

use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::Zeroize;

/// snow's ring-then-default resolver, with every DH checked.
pub(super) struct CheckedResolver(FallbackResolver);

impl CheckedResolver {
    pub(super) fn new() -> Self {
        Self(FallbackResolver::new(
            Box::new(RingResolver),
            Box::new(DefaultResolver),
        ))
    }
}

impl CryptoResolver for CheckedResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        self.0.resolve_rng()
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        self.0
            .resolve_dh(choice)
            .map(|dh| Box::new(CheckedDh(dh)) as Box<dyn Dh>)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        self.0.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        self.0.resolve_cipher(choice)
    }
}

/// A DH whose all-zero results are errors.
struct CheckedDh(Box<dyn Dh>);

/// Whether every byte is zero, looking at all of them whatever they hold.
fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |acc, &b| acc | b) == 0
}

impl Dh for CheckedDh {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn pub_len(&self) -> usize {
        self.0.pub_len()
    }

    fn priv_len(&self) -> usize {
        self.0.priv_len()
    }

    fn set(&mut self, privkey: &[u8]) {
        self.0.set(privkey)
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        self.0.generate(rng)
    }

    fn pubkey(&self) -> &[u8] {
        self.0.pubkey()
    }

    fn privkey(&self) -> &[u8] {
        self.0.privkey()
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        self.0.dh(pubkey, out)?;
        let len = self.0.dh_len().min(out.len());
        if all_zero(&out[..len]) {
            out.zeroize();
            return Err(snow::Error::Dh);
        }
        Ok(())
    }

    fn dh_len(&self) -> usize {
        self.0.dh_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_low_order_point_fails_the_dh_and_a_real_key_does_not() {
        let resolver = CheckedResolver::new();
        let mut dh = resolver.resolve_dh(&DHChoice::Curve25519).expect("x25519");
        let mut rng = resolver.resolve_rng().expect("rng");
        dh.generate(&mut *rng).expect("key");
        let mut out = [0xAAu8; 32];
        // 0 and 1 are of small order on Curve25519: X25519 with them is all zeros.
        let mut one = [0u8; 32];
        one[0] = 1;
        for point in [[0u8; 32], one] {
            assert!(matches!(dh.dh(&point, &mut out), Err(snow::Error::Dh)));
            assert_eq!(out, [0; 32], "the result is wiped");
        }
        let mut other = resolver.resolve_dh(&DHChoice::Curve25519).expect("x25519");
        other.generate(&mut *rng).expect("key");
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        dh.dh(other.pubkey(), &mut a).expect("a real key");
        other.dh(dh.pubkey(), &mut b).expect("a real key");
        assert_eq!(a, b);
        assert!(!all_zero(&a));
    }
}

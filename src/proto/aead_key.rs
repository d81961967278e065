//! An AEAD key whose expanded key schedule is wiped from memory when the key is dropped.
//!
//! ring keeps a key's schedule (the AES round keys and GHASH table, or the ChaCha20 key)
//! inline in its `LessSafeKey` and does not clear it on drop, so a link's old keys would
//! stay in freed memory after a re-key or after the link ends. [`AeadKey`] holds the ring
//! key in a `MaybeUninit` and overwrites all of its bytes with volatile writes in `Drop`.
//! Copies the compiler makes while a key is built and moved into place are out of reach;
//! the long-lived one is not.

use std::fmt;
use std::mem::MaybeUninit;

use ring::aead::{Algorithm, LessSafeKey, UnboundKey};
use zeroize::Zeroize;

// Overwriting the key in `Drop` instead of dropping it must not skip any cleanup (or leak
// memory it owns elsewhere): ring's key type owns nothing outside itself.
const _: () = assert!(!std::mem::needs_drop::<LessSafeKey>());

/// An AEAD key, wiped on drop.
pub struct AeadKey(MaybeUninit<LessSafeKey>);

impl AeadKey {
    /// A key of `alg` from its raw bytes (the caller wipes those).
    pub fn new(alg: &'static Algorithm, raw: &[u8]) -> Result<Self, ring::error::Unspecified> {
        let key = LessSafeKey::new(UnboundKey::new(alg, raw)?);
        Ok(Self(MaybeUninit::new(key)))
    }

    /// The ring key, to seal and open with.
    #[allow(unsafe_code)]
    pub fn get(&self) -> &LessSafeKey {
        // SAFETY: `self.0` is initialised in `new`, the only constructor, and is only
        // overwritten in `drop`, after which no reference to `self` can exist.
        unsafe { self.0.assume_init_ref() }
    }
}

impl Drop for AeadKey {
    fn drop(&mut self) {
        // Volatile zero writes over every byte; `MaybeUninit` holds any bit pattern, and
        // the key is never read again.
        self.0.zeroize();
    }
}

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AeadKey(MASKED)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::aead::{Aad, Nonce, AES_256_GCM};

    #[test]
    #[allow(unsafe_code)]
    fn a_wiped_key_seals_like_ring_and_its_bytes_are_zero_after_drop() {
        let raw = [0x42u8; 32];
        let ours = AeadKey::new(&AES_256_GCM, &raw).expect("key");
        let theirs = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).expect("key"));
        let seal = |k: &LessSafeKey| {
            let mut buf = b"the same bytes".to_vec();
            let nonce = Nonce::assume_unique_for_key([1; 12]);
            k.seal_in_place_append_tag(nonce, Aad::empty(), &mut buf)
                .expect("seal");
            buf
        };
        assert_eq!(seal(ours.get()), seal(&theirs));

        // Drop in place inside a buffer we keep, then look at what is left there.
        let mut slot = MaybeUninit::new(ours);
        // SAFETY: `slot` holds an initialised key, dropped exactly once here.
        unsafe { slot.assume_init_drop() };
        let len = std::mem::size_of::<AeadKey>();
        assert!(len >= 32, "a key schedule is larger than the key");
        // SAFETY: the drop wrote a whole zeroed `MaybeUninit<LessSafeKey>` over the key,
        // every one of its `len` bytes, so all of them are initialised; `slot` lives on.
        let left = unsafe { std::slice::from_raw_parts(slot.as_ptr().cast::<u8>(), len) };
        assert!(left.iter().all(|&b| b == 0), "key bytes left after drop");
    }
}

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::Error;

/// The shortest hash secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// Hashes raw client IDs (addresses, API keys, user IDs) into [`ClientKey`]s with
/// HMAC-SHA-256 under a deployment secret.
///
/// Every worker of a deployment must use the same secret, or they will count the same client
/// under different keys. The secret is what makes the hash private: an unkeyed SHA-256 of an
/// IPv4 address is reversed by hashing all 2^32 addresses, minutes of work; with a secret the
/// hashes reveal nothing to whoever reads Redis, logs or metrics.
#[derive(Clone)]
pub struct ClientKeyHasher {
    mac: Hmac<Sha256>,
}

impl ClientKeyHasher {
    /// A hasher keyed with `secret`.
    ///
    /// # Errors
    /// [`Error::InvalidSecret`] when the secret is shorter than [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, Error> {
        let secret = secret.as_ref();
        if secret.len() < MIN_SECRET_LEN {
            return Err(Error::InvalidSecret {
                reason: "the hash secret must be at least 16 bytes",
            });
        }
        let mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| Error::InvalidSecret {
            reason: "the hash secret was refused by HMAC",
        })?;
        Ok(Self { mac })
    }

    /// The key of a raw client ID: any bytes at all, of any length, including empty,
    /// non-UTF-8 and control characters.
    pub fn hash(&self, client_id: impl AsRef<[u8]>) -> ClientKey {
        let mut mac = self.mac.clone();
        mac.update(client_id.as_ref());
        let digest = mac.finalize().into_bytes();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        ClientKey(key)
    }
}

impl fmt::Debug for ClientKeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKeyHasher { secret: <redacted> }")
    }
}

/// A client's identity as every backend sees it: the first 128 bits of the keyed hash of
/// its raw ID. It holds no trace of the raw ID; `Display` and `Debug` print the hash in hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey([u8; 16]);

impl ClientKey {
    /// A key from its 16 bytes, as stored or as produced by [`ClientKeyHasher::hash`].
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The 16 bytes of the hash.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The hash as one integer (big-endian), convenient for in-memory maps.
    pub const fn as_u128(&self) -> u128 {
        u128::from_be_bytes(self.0)
    }

    /// The 32 lowercase hex digits of the hash, as used in storage keys.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// [`to_hex`](Self::to_hex) without allocating: for hot paths (a cluster hash slot).
    pub fn hex_digits(&self) -> [u8; 32] {
        let mut buf = [0u8; 32];
        // Cannot fail: the buffer is exactly twice the input.
        let _ = hex::encode_to_slice(self.0, &mut buf);
        buf
    }
}

impl From<u128> for ClientKey {
    fn from(v: u128) -> Self {
        Self(v.to_be_bytes())
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let buf = self.hex_digits();
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef-test-secret";

    #[test]
    fn matches_hmac_sha256_test_vector() {
        // RFC 4231 test case 2 (key "Jefe" is too short for us; use case 1's 20-byte key).
        let hasher = ClientKeyHasher::new([0x0b; 20]).unwrap();
        let key = hasher.hash("Hi There");
        assert_eq!(key.to_hex(), "b0344c61d8db38535ca8afceaf0bf12b");
        assert_eq!(key.to_string(), key.to_hex());
    }

    #[test]
    fn keyed_by_the_secret() {
        let a = ClientKeyHasher::new(SECRET).unwrap();
        let b = ClientKeyHasher::new(b"another secret of 16+ bytes").unwrap();
        assert_eq!(
            a.hash("10.0.0.1"),
            a.hash(String::from("10.0.0.1").into_bytes())
        );
        assert_ne!(a.hash("10.0.0.1"), b.hash("10.0.0.1"));
        assert_ne!(a.hash("10.0.0.1"), a.hash("10.0.0.2"));
    }

    #[test]
    fn short_secrets_are_refused() {
        for s in [&b""[..], b"short", &[7u8; MIN_SECRET_LEN - 1]] {
            let err = ClientKeyHasher::new(s).unwrap_err();
            assert!(err.is_invalid_input());
        }
        assert!(ClientKeyHasher::new([7u8; MIN_SECRET_LEN]).is_ok());
    }

    #[test]
    fn nothing_prints_the_raw_id_or_the_secret() {
        let hasher = ClientKeyHasher::new(SECRET).unwrap();
        let raw = "user@example.com";
        let key = hasher.hash(raw);
        for shown in [
            format!("{key}"),
            format!("{key:?}"),
            format!("{hasher:?}"),
            key.to_hex(),
        ] {
            assert!(!shown.contains(raw), "{shown}");
            assert!(!shown.contains("test-secret"), "{shown}");
        }
        assert_eq!(format!("{key:?}"), format!("ClientKey({key})"));
    }

    #[test]
    fn round_trips_through_bytes_and_u128() {
        let key = ClientKey::from(0x0123_4567_89ab_cdef_0011_2233_4455_6677_u128);
        assert_eq!(key.to_hex(), "0123456789abcdef0011223344556677");
        assert_eq!(ClientKey::from_bytes(*key.as_bytes()), key);
        assert_eq!(ClientKey::from(key.as_u128()), key);
    }
}

//! Cluster datagrams: a small header, a body, and an HMAC-SHA256 tag.
//!
//! ```text
//! "VSWC" | version (1) | kind (1) | body ... | tag (16: HMAC-SHA256 truncated)
//! ```
//!
//! `kind` 0 carries a foca (SWIM) message, 1 a [`SyncMsg`] in postcard.
//! The tag covers everything before it; a datagram whose tag does not
//! verify under the shared key is dropped before anything parses it.
use crate::table::{Delta, DigestItem};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const MAGIC: &[u8; 4] = b"VSWC";
const VERSION: u8 = 1;
/// Bytes of tag kept (128 bits, as RFC 2104 allows).
pub const TAG_LEN: usize = 16;
/// Header bytes.
pub const HEADER_LEN: usize = 6;

/// What a datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SWIM membership (foca).
    Swim,
    /// Table sync.
    Sync,
}

/// Table sync messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMsg {
    /// What the sender has; answer with what it lacks, and with a digest
    /// of your own when `reply` is set and you lack something.
    Digest {
        /// Items (one per host).
        items: Vec<DigestItem>,
        /// Send a digest back if the sender has more.
        reply: bool,
    },
    /// A piece of one host's changes.
    Delta(Delta),
    /// The sender's own probes found this member dead and its suspicion
    /// ran out: sent to every member at once, so that no host waits for
    /// the SWIM piggyback to reach it (which can miss a host for seconds).
    Down(crate::gossip::Node),
}

/// Why a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Too short, wrong magic or version, unknown kind.
    #[error("malformed header")]
    Malformed,
    /// The tag does not verify.
    #[error("bad authentication tag")]
    BadTag,
}

/// The shared key.
#[derive(Clone)]
pub struct Key(Hmac<Sha256>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A key from secret bytes (at least 16).
    pub fn new(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < 16 {
            return Err(format!(
                "the cluster key has {} bytes; use at least 16 random bytes (e.g. `head -c 32 /dev/urandom > FILE`)",
                secret.len()
            ));
        }
        Hmac::<Sha256>::new_from_slice(secret)
            .map(Key)
            .map_err(|e| e.to_string())
    }

    /// Frames `body` of `kind` into `out` (cleared first).
    pub fn seal(&self, kind: Kind, body: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(match kind {
            Kind::Swim => 0,
            Kind::Sync => 1,
        });
        out.extend_from_slice(body);
        let mut m = self.0.clone();
        m.update(out);
        let tag = m.finalize().into_bytes();
        out.extend_from_slice(&tag[..TAG_LEN]);
    }

    /// Checks a datagram; returns its kind and body.
    pub fn open<'a>(&self, dgram: &'a [u8]) -> Result<(Kind, &'a [u8]), WireError> {
        if dgram.len() < HEADER_LEN + TAG_LEN || &dgram[..4] != MAGIC || dgram[4] != VERSION {
            return Err(WireError::Malformed);
        }
        let (signed, tag) = dgram.split_at(dgram.len() - TAG_LEN);
        let mut m = self.0.clone();
        m.update(signed);
        m.verify_truncated_left(tag)
            .map_err(|_| WireError::BadTag)?;
        let kind = match signed[5] {
            0 => Kind::Swim,
            1 => Kind::Sync,
            _ => return Err(WireError::Malformed),
        };
        Ok((kind, &signed[HEADER_LEN..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_forgery() {
        let k = Key::new(b"0123456789abcdef0123").unwrap();
        let mut out = Vec::new();
        k.seal(Kind::Sync, b"hello", &mut out);
        assert_eq!(k.open(&out), Ok((Kind::Sync, &b"hello"[..])));
        // A flipped body bit, a wrong key, a truncated datagram.
        let mut bad = out.clone();
        bad[7] ^= 1;
        assert_eq!(k.open(&bad), Err(WireError::BadTag));
        let other = Key::new(b"another key of 16+ bytes").unwrap();
        assert_eq!(other.open(&out), Err(WireError::BadTag));
        assert_eq!(k.open(&out[..10]), Err(WireError::Malformed));
        assert!(Key::new(b"short").is_err());
    }
}

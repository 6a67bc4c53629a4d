//! The UDP datagram wire format, shared by the router's UDP fan-out (which
//! encodes) and [`Receiver`](crate::Receiver) (which decodes).
//!
//! Every datagram is a small header followed by the payload (the HTTP
//! request body the router received), all integers big-endian:
//!
//! ```text
//! offset  size  field
//! 0       4     magic "BRDG"
//! 4       1     version, currently 1
//! 5       1     copy: 0 for the first transmission, 1.. for repeats
//! 6       8     sequence: per router process, one number per broadcast;
//!               the same in every copy and for every pod
//! 14      1     id length L (1..=128)
//! 15      L     broadcast id (ASCII; the X-Broadcast-Id of the broadcast)
//! 15+L    ...   payload
//! ```
//!
//! Receivers drop duplicates by broadcast id: every copy of one broadcast,
//! to every pod, carries the same id and sequence.

use bytes::{BufMut, Bytes, BytesMut};

/// The first four bytes of every datagram.
pub const MAGIC: [u8; 4] = *b"BRDG";
/// The format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Header bytes before the broadcast id.
pub const FIXED_HEADER: usize = 15;
/// The longest broadcast id a frame can carry.
pub const MAX_ID_LEN: usize = 128;

/// One decoded datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The transmission index: 0, then 1.. for repeats.
    pub copy: u8,
    /// The broadcast's sequence number.
    pub sequence: u64,
    /// The broadcast id.
    pub id: String,
    /// The payload.
    pub payload: Bytes,
}

/// Why a datagram is not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than the fixed header.
    #[error("datagram of {0} bytes is shorter than the {FIXED_HEADER}-byte header")]
    TooShort(usize),
    /// Does not start with "BRDG".
    #[error("datagram does not start with the BRDG magic")]
    BadMagic,
    /// A version this code does not read.
    #[error("unsupported frame version {0}")]
    UnsupportedVersion(u8),
    /// The id length is 0, above 128, or past the end of the datagram.
    #[error("invalid broadcast id length {0}")]
    BadIdLength(usize),
    /// The id is not printable ASCII.
    #[error("the broadcast id is not printable ASCII")]
    BadId,
}

/// The size of a frame carrying `id` and `payload_len` payload bytes.
pub fn encoded_len(id: &str, payload_len: usize) -> usize {
    FIXED_HEADER + id.len() + payload_len
}

/// Encodes one datagram. `id` must be 1 to 128 ASCII bytes (broadcast ids
/// are validated before they get here).
pub fn encode(copy: u8, sequence: u64, id: &str, payload: &[u8]) -> Bytes {
    debug_assert!((1..=MAX_ID_LEN).contains(&id.len()) && id.is_ascii());
    let mut frame = BytesMut::with_capacity(encoded_len(id, payload.len()));
    frame.put_slice(&MAGIC);
    frame.put_u8(VERSION);
    frame.put_u8(copy);
    frame.put_u64(sequence);
    frame.put_u8(id.len() as u8);
    frame.put_slice(id.as_bytes());
    frame.put_slice(payload);
    frame.freeze()
}

/// Decodes one datagram.
pub fn decode(datagram: &[u8]) -> Result<Frame, FrameError> {
    if datagram.len() < FIXED_HEADER {
        return Err(FrameError::TooShort(datagram.len()));
    }
    if datagram[..4] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    if datagram[4] != VERSION {
        return Err(FrameError::UnsupportedVersion(datagram[4]));
    }
    let copy = datagram[5];
    let sequence = u64::from_be_bytes(datagram[6..14].try_into().expect("8 bytes"));
    let id_len = usize::from(datagram[14]);
    if id_len == 0 || id_len > MAX_ID_LEN || FIXED_HEADER + id_len > datagram.len() {
        return Err(FrameError::BadIdLength(id_len));
    }
    let id = &datagram[FIXED_HEADER..FIXED_HEADER + id_len];
    if !id.iter().all(|b| b.is_ascii_graphic()) {
        return Err(FrameError::BadId);
    }
    Ok(Frame {
        copy,
        sequence,
        id: String::from_utf8(id.to_vec()).expect("ASCII is UTF-8"),
        payload: Bytes::copy_from_slice(&datagram[FIXED_HEADER + id_len..]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let datagram = encode(2, 77, "b-1", b"hello");
        assert_eq!(datagram.len(), encoded_len("b-1", 5));
        let frame = decode(&datagram).unwrap();
        assert_eq!(frame.copy, 2);
        assert_eq!(frame.sequence, 77);
        assert_eq!(frame.id, "b-1");
        assert_eq!(&frame.payload[..], b"hello");
    }

    #[test]
    fn malformed_datagrams_are_rejected() {
        assert_eq!(decode(b"BRDG"), Err(FrameError::TooShort(4)));
        let good = encode(0, 1, "id", b"x");
        let mut bad = good.to_vec();
        bad[0] = b'X';
        assert_eq!(decode(&bad), Err(FrameError::BadMagic));
        let mut bad = good.to_vec();
        bad[4] = 9;
        assert_eq!(decode(&bad), Err(FrameError::UnsupportedVersion(9)));
        let mut bad = good.to_vec();
        bad[14] = 200;
        assert_eq!(decode(&bad), Err(FrameError::BadIdLength(200)));
        let mut bad = good.to_vec();
        bad[15] = b' ';
        assert_eq!(decode(&bad), Err(FrameError::BadId));
        // Every prefix of a valid frame either decodes or errors; none panic.
        for end in 0..good.len() {
            let _ = decode(&good[..end]);
        }
    }
}

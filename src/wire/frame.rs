//! The mirroring endpoint's frame: a 64-byte header with its own checksum, then a body.
//!
//! This module owns the byte layout of a frame and its validation, sans-IO: encoding into a
//! `Vec`, incremental parsing out of a receive buffer, and LZ4 decompression of a body.
//!
//! ```text
//! offset size field
//!      0    4 magic       0x524C_4D4D: the bytes "MMLR" on the wire (little-endian)
//!      4    4 header_crc  CRC32C of header bytes 8..64
//!      8    2 version     protocol version of this frame
//!     10    1 kind        `FrameKind`
//!     11    1 flags       bit 0: the body is LZ4-compressed (block format); other bits zero
//!     12    4 body_len    body bytes on the wire
//!     16    8 db_id       database the frame belongs to
//!     24    8 epoch       role sequence of the sender
//!     32    8 lsn_from    log range the frame covers (equal when it covers none)
//!     40    8 lsn_to
//!     48    4 body_crc    CRC32C of the body bytes as sent (compressed, if compressed)
//!     52    4 raw_len     body length after decompression (== body_len when not compressed)
//!     56    8 reserved    zero
//! ```
//!
//! The header checksum covers the body checksum and the identity (database, role sequence, LSN
//! range), so a header that validates can be trusted before its body is read: lengths are checked
//! against `FRAME_BODY_MAX` before anything is awaited or allocated.
//!
//! Versions: a build speaks `PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION`. Version 1 has no
//! compression; version 2 adds the LZ4 flag; version 3 adds page rewind (PAGE_REQUEST and
//! PAGE_IMAGE, `mirroring::page_rewind`).

use std::borrow::Cow;

use crate::wal::{DbId, Epoch, Lsn};

/// First four bytes of every frame: "MMLR" on the wire.
pub const FRAME_MAGIC: u32 = 0x524C_4D4D;
/// The protocol version this build speaks natively.
pub const PROTOCOL_VERSION: u16 = 3;
/// The oldest protocol version this build still speaks.
pub const PROTOCOL_VERSION_MIN: u16 = 1;
/// First version with LZ4-compressed bodies.
pub const PROTOCOL_VERSION_LZ4: u16 = 2;
/// First version with page rewind at rejoin.
pub const PROTOCOL_VERSION_REWIND: u16 = 3;
pub const FRAME_HEADER_SIZE: usize = 64;
/// Largest body, both on the wire (`body_len`) and after decompression (`raw_len`).
pub const FRAME_BODY_MAX: usize = 2 * 1024 * 1024;

/// Flag bit 0: the body is LZ4-compressed.
const FLAG_LZ4: u8 = 1;

const _: () = assert!(FRAME_HEADER_SIZE == 64);
const _: () = assert!(PROTOCOL_VERSION_MIN <= PROTOCOL_VERSION);
const _: () = assert!(PROTOCOL_VERSION_MIN <= PROTOCOL_VERSION_LZ4 && PROTOCOL_VERSION_LZ4 <= PROTOCOL_VERSION);
// Lengths travel as u32.
const _: () = assert!(FRAME_BODY_MAX <= u32::MAX as usize);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Dialer → acceptor: version range, segment size, nonce.
    Hello = 1,
    /// Acceptor → dialer: chosen version, nonce, the acceptor's proof of the key.
    Challenge = 2,
    /// Dialer → acceptor: the dialer's proof of the key.
    Proof = 3,
    /// Acceptor → dialer: authenticated; the mirror's log position.
    Ready = 4,
    /// Either way: the connection is refused; the body is a reason in plain text.
    Refuse = 5,
    /// Principal → mirror: log bytes `lsn_from..lsn_to`.
    Log = 6,
    /// Mirror → principal: hardened up to `lsn_to`.
    Ack = 7,
    Ping = 8,
    Pong = 9,
    /// Principal → mirror (manual failover): everything up to `lsn_to` is sent; take over as
    /// principal with role sequence `epoch`. The body is the principal's endpoint, UTF-8.
    Failover = 10,
    /// Mirror → principal: the failover at `lsn_to` is persisted; the sender is principal now.
    FailoverDone = 11,
    /// Partner → witness: its role, state and requests (`witness::report`).
    WitnessReport = 12,
    /// Witness → partner: the answer to the report numbered `lsn_to`.
    WitnessAnswer = 13,
    /// Mirror → principal (a rejoin's page rewind): send these pages.
    PageRequest = 14,
    /// Principal → mirror: one page's current image (or that it was never written).
    PageImage = 15,
}

impl FrameKind {
    pub const ALL: [FrameKind; 15] = [
        FrameKind::Hello,
        FrameKind::Challenge,
        FrameKind::Proof,
        FrameKind::Ready,
        FrameKind::Refuse,
        FrameKind::Log,
        FrameKind::Ack,
        FrameKind::Ping,
        FrameKind::Pong,
        FrameKind::Failover,
        FrameKind::FailoverDone,
        FrameKind::WitnessReport,
        FrameKind::WitnessAnswer,
        FrameKind::PageRequest,
        FrameKind::PageImage,
    ];

    pub fn from_u8(byte: u8) -> Option<FrameKind> {
        FrameKind::ALL.into_iter().find(|kind| *kind as u8 == byte)
    }
}

/// A decoded, validated frame header (the magic and header checksum are implied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u16,
    pub kind: FrameKind,
    pub compressed: bool,
    pub body_len: u32,
    pub db_id: DbId,
    pub epoch: Epoch,
    pub lsn_from: Lsn,
    pub lsn_to: Lsn,
    pub body_crc: u32,
    pub raw_len: u32,
}

impl FrameHeader {
    /// Bytes of the whole frame on the wire: header and body.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_SIZE + self.body_len as usize
    }
}

/// Why a frame was refused. The messages are logged when a peer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not a mirroring frame: magic {found:#010x}, expected {FRAME_MAGIC:#010x}")]
    BadMagic { found: u32 },
    #[error("frame header checksum mismatch")]
    BadHeaderCrc,
    #[error("unsupported protocol version {found}: this build speaks versions {min} to {max}")]
    UnsupportedVersion { found: u16, min: u16, max: u16 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("unknown frame flags {0:#04x}")]
    BadFlags(u8),
    #[error("reserved header bytes are not zero")]
    ReservedNotZero,
    #[error("frame body of {len} bytes is larger than the limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    #[error("uncompressed frame has body length {body_len} but raw length {raw_len}")]
    BadRawLen { body_len: u32, raw_len: u32 },
    #[error("frame LSN range is backwards: from {from} to {to}")]
    BadLsnRange { from: u64, to: u64 },
    #[error("frame body checksum mismatch")]
    BadBodyCrc,
    #[error("frame body does not decompress: {0}")]
    Decompress(String),
    #[error("compressed body in a version 1 frame (version 1 has no compression)")]
    CompressedInV1,
    #[error("frame is truncated: {len} bytes of {need}")]
    Truncated { len: usize, need: usize },
}

/// Encodes a header, computing its checksum. The header must be valid: `decode_header` of the
/// result gives it back.
pub fn encode_header(h: &FrameHeader) -> [u8; FRAME_HEADER_SIZE] {
    assert!(
        (PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&h.version),
        "frame version {} outside {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION}",
        h.version
    );
    assert!(!h.compressed || h.version >= PROTOCOL_VERSION_LZ4, "compressed frame at version {}", h.version);
    assert!(h.body_len as usize <= FRAME_BODY_MAX && h.raw_len as usize <= FRAME_BODY_MAX);
    assert!(h.compressed || h.body_len == h.raw_len);
    assert!(h.lsn_from <= h.lsn_to, "{} after {}", h.lsn_from, h.lsn_to);

    let mut out = [0u8; FRAME_HEADER_SIZE];
    out[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    out[8..10].copy_from_slice(&h.version.to_le_bytes());
    out[10] = h.kind as u8;
    out[11] = if h.compressed { FLAG_LZ4 } else { 0 };
    out[12..16].copy_from_slice(&h.body_len.to_le_bytes());
    out[16..24].copy_from_slice(&h.db_id.0.to_le_bytes());
    out[24..32].copy_from_slice(&h.epoch.0.to_le_bytes());
    out[32..40].copy_from_slice(&h.lsn_from.0.to_le_bytes());
    out[40..48].copy_from_slice(&h.lsn_to.0.to_le_bytes());
    out[48..52].copy_from_slice(&h.body_crc.to_le_bytes());
    out[52..56].copy_from_slice(&h.raw_len.to_le_bytes());
    // 56..64 reserved, zero.
    let crc = crc32c::crc32c(&out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

fn u16_at(b: &[u8; FRAME_HEADER_SIZE], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8; FRAME_HEADER_SIZE], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8; FRAME_HEADER_SIZE], at: usize) -> u64 {
    let mut eight = [0u8; 8];
    eight.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(eight)
}

fn check_magic(first4: [u8; 4]) -> Result<(), FrameError> {
    let found = u32::from_le_bytes(first4);
    if found != FRAME_MAGIC {
        return Err(FrameError::BadMagic { found });
    }
    Ok(())
}

fn check_len(len: u32) -> Result<(), FrameError> {
    if len as usize > FRAME_BODY_MAX {
        return Err(FrameError::TooLarge { len: len.into(), max: FRAME_BODY_MAX as u64 });
    }
    Ok(())
}

/// Decodes and validates a header. The checksum is checked before any field is interpreted, so a
/// flipped bit is always reported as `BadHeaderCrc` (or `BadMagic` in the first four bytes).
pub fn decode_header(bytes: &[u8; FRAME_HEADER_SIZE]) -> Result<FrameHeader, FrameError> {
    check_magic([bytes[0], bytes[1], bytes[2], bytes[3]])?;
    if crc32c::crc32c(&bytes[8..]) != u32_at(bytes, 4) {
        return Err(FrameError::BadHeaderCrc);
    }

    let version = u16_at(bytes, 8);
    if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&version) {
        return Err(FrameError::UnsupportedVersion {
            found: version,
            min: PROTOCOL_VERSION_MIN,
            max: PROTOCOL_VERSION,
        });
    }
    let kind = FrameKind::from_u8(bytes[10]).ok_or(FrameError::UnknownKind(bytes[10]))?;
    let flags = bytes[11];
    if flags & !FLAG_LZ4 != 0 {
        return Err(FrameError::BadFlags(flags));
    }
    let compressed = flags & FLAG_LZ4 != 0;
    if compressed && version < PROTOCOL_VERSION_LZ4 {
        return Err(FrameError::CompressedInV1);
    }
    if bytes[56..64] != [0u8; 8] {
        return Err(FrameError::ReservedNotZero);
    }

    let body_len = u32_at(bytes, 12);
    let raw_len = u32_at(bytes, 52);
    check_len(body_len)?;
    check_len(raw_len)?;
    if !compressed && body_len != raw_len {
        return Err(FrameError::BadRawLen { body_len, raw_len });
    }
    let lsn_from = u64_at(bytes, 32);
    let lsn_to = u64_at(bytes, 40);
    if lsn_from > lsn_to {
        return Err(FrameError::BadLsnRange { from: lsn_from, to: lsn_to });
    }

    Ok(FrameHeader {
        version,
        kind,
        compressed,
        body_len,
        db_id: DbId(u64_at(bytes, 16)),
        epoch: Epoch(u64_at(bytes, 24)),
        lsn_from: Lsn(lsn_from),
        lsn_to: Lsn(lsn_to),
        body_crc: u32_at(bytes, 48),
        raw_len,
    })
}

/// Encodes a whole frame: header then body. With `compress` and a version that has compression,
/// the body is LZ4-compressed, and the compressed form is sent only when it is smaller.
///
/// The arguments are the header's fields, in the header's order; grouping them would only move
/// the list into a struct literal at every call site.
#[allow(clippy::too_many_arguments)]
pub fn encode_frame(
    version: u16,
    kind: FrameKind,
    db_id: DbId,
    epoch: Epoch,
    lsn_from: Lsn,
    lsn_to: Lsn,
    body: &[u8],
    compress: bool,
) -> Vec<u8> {
    assert!(body.len() <= FRAME_BODY_MAX, "frame body of {} bytes", body.len());
    let packed = if compress && version >= PROTOCOL_VERSION_LZ4 {
        Some(lz4_flex::block::compress(body)).filter(|packed| packed.len() < body.len())
    } else {
        None
    };
    let sent: &[u8] = packed.as_deref().unwrap_or(body);
    let header = FrameHeader {
        version,
        kind,
        compressed: packed.is_some(),
        body_len: sent.len() as u32,
        db_id,
        epoch,
        lsn_from,
        lsn_to,
        body_crc: crc32c::crc32c(sent),
        raw_len: body.len() as u32,
    };
    let mut out = Vec::with_capacity(FRAME_HEADER_SIZE + sent.len());
    out.extend_from_slice(&encode_header(&header));
    out.extend_from_slice(sent);
    out
}

/// The header of an uncompressed frame whose body is sent separately (zero-copy from another
/// buffer): the header then `body`, unchanged, make the frame.
pub fn header_for_body(
    version: u16,
    kind: FrameKind,
    db_id: DbId,
    epoch: Epoch,
    lsn_from: Lsn,
    lsn_to: Lsn,
    body: &[u8],
) -> [u8; FRAME_HEADER_SIZE] {
    assert!(body.len() <= FRAME_BODY_MAX, "frame body of {} bytes", body.len());
    encode_header(&FrameHeader {
        version,
        kind,
        compressed: false,
        body_len: body.len() as u32,
        db_id,
        epoch,
        lsn_from,
        lsn_to,
        body_crc: crc32c::crc32c(body),
        raw_len: body.len() as u32,
    })
}

/// What `parse` found at the start of a receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole frame yet: call again once the buffer holds at least `need` bytes in total.
    Incomplete { need: usize },
    /// A whole, valid frame: the first `total_len` bytes of the buffer (header and body).
    Frame { header: FrameHeader, total_len: usize },
}

/// Parses the frame at the start of `buf`, incrementally. The magic is checked as soon as four
/// bytes are there and the whole header as soon as 64 are, so garbage is refused before any body
/// is awaited; the body checksum is checked once the body is complete. Never panics; allocates
/// nothing.
pub fn parse(buf: &[u8]) -> Result<Parsed, FrameError> {
    if let Some(first4) = buf.first_chunk::<4>() {
        check_magic(*first4)?;
    }
    let Some(header_bytes) = buf.first_chunk::<FRAME_HEADER_SIZE>() else {
        return Ok(Parsed::Incomplete { need: FRAME_HEADER_SIZE });
    };
    let header = decode_header(header_bytes)?;
    let total_len = header.frame_len();
    let Some(body) = buf.get(FRAME_HEADER_SIZE..total_len) else {
        return Ok(Parsed::Incomplete { need: total_len });
    };
    if crc32c::crc32c(body) != header.body_crc {
        return Err(FrameError::BadBodyCrc);
    }
    Ok(Parsed::Frame { header, total_len })
}

/// The raw body of a frame `parse` accepted: `frame_bytes` starts at the header. An uncompressed
/// body is borrowed; a compressed one is decompressed into a `Vec` of exactly `raw_len` bytes
/// (bounded by `FRAME_BODY_MAX`, checked in the header). Does not re-check the body checksum.
pub fn body_bytes<'a>(header: &FrameHeader, frame_bytes: &'a [u8]) -> Result<Cow<'a, [u8]>, FrameError> {
    let need = header.frame_len();
    let body =
        frame_bytes.get(FRAME_HEADER_SIZE..need).ok_or(FrameError::Truncated { len: frame_bytes.len(), need })?;
    if !header.compressed {
        return Ok(Cow::Borrowed(body));
    }
    let raw_len = header.raw_len as usize;
    debug_assert!(raw_len <= FRAME_BODY_MAX);
    let mut raw = vec![0u8; raw_len];
    // lz4_flex bounds-checks every read and write while decoding (always, since 0.11), so a
    // malformed body is an error here, never an overrun; output past `raw_len` is an error too.
    let written =
        lz4_flex::block::decompress_into(body, &mut raw).map_err(|err| FrameError::Decompress(err.to_string()))?;
    if written != raw_len {
        return Err(FrameError::Decompress(format!("{written} bytes decompressed, the header says {raw_len}")));
    }
    Ok(Cow::Owned(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic xorshift64 generator.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    fn sample_frame(kind: FrameKind, body: &[u8], compress: bool) -> Vec<u8> {
        encode_frame(PROTOCOL_VERSION, kind, DbId(7), Epoch(3), Lsn(4096), Lsn(4096 + 100), body, compress)
    }

    fn parse_whole(frame: &[u8]) -> (FrameHeader, Vec<u8>) {
        match parse(frame).unwrap() {
            Parsed::Frame { header, total_len } => {
                assert_eq!(total_len, frame.len());
                (header, body_bytes(&header, frame).unwrap().into_owned())
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Rewrites the header checksum after a test edits header fields.
    fn reseal(frame: &mut [u8]) {
        let crc = crc32c::crc32c(&frame[8..FRAME_HEADER_SIZE]);
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
    }

    fn compressible_body() -> Vec<u8> {
        (0..10_000u32).flat_map(|i| (i % 50).to_le_bytes()).collect()
    }

    #[test]
    fn every_kind_round_trips() {
        for kind in FrameKind::ALL {
            assert_eq!(FrameKind::from_u8(kind as u8), Some(kind));
            for version in PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION {
                let body = format!("body of {kind:?}").into_bytes();
                let frame = encode_frame(version, kind, DbId(9), Epoch(5), Lsn(10), Lsn(20), &body, false);
                let (header, got) = parse_whole(&frame);
                assert_eq!(got, body);
                assert_eq!(
                    header,
                    FrameHeader {
                        version,
                        kind,
                        compressed: false,
                        body_len: body.len() as u32,
                        db_id: DbId(9),
                        epoch: Epoch(5),
                        lsn_from: Lsn(10),
                        lsn_to: Lsn(20),
                        body_crc: crc32c::crc32c(&body),
                        raw_len: body.len() as u32,
                    }
                );
            }
        }
        assert_eq!(FrameKind::from_u8(0), None);
        assert_eq!(FrameKind::from_u8(16), None);
    }

    #[test]
    fn empty_body_round_trips() {
        let frame = sample_frame(FrameKind::Ping, &[], true);
        assert_eq!(frame.len(), FRAME_HEADER_SIZE);
        let (header, body) = parse_whole(&frame);
        assert!(!header.compressed && body.is_empty());
    }

    #[test]
    fn header_for_body_matches_encode_frame() {
        let body = b"log bytes sent from the log buffer";
        let header = header_for_body(2, FrameKind::Log, DbId(1), Epoch(2), Lsn(0), Lsn(34), body);
        let frame = encode_frame(2, FrameKind::Log, DbId(1), Epoch(2), Lsn(0), Lsn(34), body, false);
        assert_eq!(&frame[..FRAME_HEADER_SIZE], &header);
        assert_eq!(&frame[FRAME_HEADER_SIZE..], body);
    }

    #[test]
    fn lz4_round_trips_and_is_used_only_when_smaller() {
        let body = compressible_body();
        let frame = sample_frame(FrameKind::Log, &body, true);
        assert!(frame.len() < FRAME_HEADER_SIZE + body.len() / 4, "compressed to {}", frame.len());
        let (header, got) = parse_whole(&frame);
        assert!(header.compressed);
        assert_eq!(header.raw_len as usize, body.len());
        assert_eq!(got, body);

        // Random bytes do not compress: sent as they are.
        let noise = XorShift(0x9E37_79B9_7F4A_7C15).bytes(4096);
        let frame = sample_frame(FrameKind::Log, &noise, true);
        let (header, got) = parse_whole(&frame);
        assert!(!header.compressed);
        assert_eq!(got, noise);

        // Version 1 never compresses.
        let frame = encode_frame(1, FrameKind::Log, DbId(1), Epoch(1), Lsn(0), Lsn(0), &body, true);
        let (header, got) = parse_whole(&frame);
        assert!(!header.compressed);
        assert_eq!(got, body);
    }

    #[test]
    fn compressed_v1_frame_is_refused() {
        let body = compressible_body();
        let mut frame = sample_frame(FrameKind::Log, &body, true);
        frame[8..10].copy_from_slice(&1u16.to_le_bytes());
        reseal(&mut frame);
        assert_eq!(parse(&frame), Err(FrameError::CompressedInV1));
    }

    #[test]
    fn wrong_raw_len_of_a_compressed_body_is_refused() {
        let body = compressible_body();
        for raw_len in [body.len() - 1, body.len() + 1, 0] {
            let mut frame = sample_frame(FrameKind::Log, &body, true);
            frame[52..56].copy_from_slice(&(raw_len as u32).to_le_bytes());
            reseal(&mut frame);
            let Parsed::Frame { header, .. } = parse(&frame).unwrap() else { panic!("incomplete") };
            assert!(matches!(body_bytes(&header, &frame), Err(FrameError::Decompress(_))), "raw_len {raw_len}");
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        for compress in [false, true] {
            let body = if compress { compressible_body()[..2000].to_vec() } else { b"0123456789abcdef".to_vec() };
            let frame = sample_frame(FrameKind::Log, &body, compress);
            assert_eq!(parse_whole(&frame).0.compressed, compress);
            for bit in 0..frame.len() * 8 {
                let mut bad = frame.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                let expected = match bit / 8 {
                    0..4 => FrameError::BadMagic { found: u32::from_le_bytes(bad[..4].try_into().unwrap()) },
                    4..FRAME_HEADER_SIZE => FrameError::BadHeaderCrc,
                    _ => FrameError::BadBodyCrc,
                };
                assert_eq!(parse(&bad), Err(expected), "bit {bit}");
            }
        }
    }

    #[test]
    fn a_flipped_version_bit_is_a_bad_crc_not_a_bad_version() {
        let mut frame = sample_frame(FrameKind::Ack, &[], false);
        frame[9] ^= 0x80;
        assert_eq!(parse(&frame), Err(FrameError::BadHeaderCrc));
        reseal(&mut frame);
        assert_eq!(parse(&frame), Err(FrameError::UnsupportedVersion { found: 0x8003, min: 1, max: 3 }));
    }

    #[test]
    fn truncation_at_every_length_is_incomplete() {
        for compress in [false, true] {
            let frame = sample_frame(FrameKind::Log, &compressible_body()[..3000], compress);
            for len in 0..frame.len() {
                let need = if len < FRAME_HEADER_SIZE { FRAME_HEADER_SIZE } else { frame.len() };
                assert_eq!(parse(&frame[..len]), Ok(Parsed::Incomplete { need }), "len {len}");
            }
            // Bytes of the next frame after this one do not matter.
            let mut two = frame.clone();
            two.extend_from_slice(&frame[..10]);
            assert!(matches!(parse(&two), Ok(Parsed::Frame { total_len, .. }) if total_len == frame.len()));
        }
        let frame = sample_frame(FrameKind::Ping, b"x", false);
        let header = decode_header(frame[..64].try_into().unwrap()).unwrap();
        assert_eq!(body_bytes(&header, &frame[..64]), Err(FrameError::Truncated { len: 64, need: 65 }));
    }

    #[test]
    fn bad_fields_with_a_valid_crc_are_refused() {
        let frame = sample_frame(FrameKind::Log, b"abc", false);
        let cases: [(usize, u8, FrameError); 6] = [
            (10, 0, FrameError::UnknownKind(0)),
            (10, 200, FrameError::UnknownKind(200)),
            (11, 2, FrameError::BadFlags(2)),
            (11, 0x81, FrameError::BadFlags(0x81)),
            (63, 1, FrameError::ReservedNotZero),
            (8, 4, FrameError::UnsupportedVersion { found: 4, min: 1, max: 3 }),
        ];
        for (at, value, expected) in cases {
            let mut bad = frame.clone();
            bad[at] = value;
            reseal(&mut bad);
            assert_eq!(parse(&bad), Err(expected));
        }
        // Backwards LSN range.
        let mut bad = frame.clone();
        bad[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        reseal(&mut bad);
        assert_eq!(parse(&bad), Err(FrameError::BadLsnRange { from: u64::MAX, to: 4196 }));
        // Uncompressed body whose raw length differs.
        let mut bad = frame.clone();
        bad[52..56].copy_from_slice(&4u32.to_le_bytes());
        reseal(&mut bad);
        assert_eq!(parse(&bad), Err(FrameError::BadRawLen { body_len: 3, raw_len: 4 }));
    }

    #[test]
    fn oversize_lengths_are_refused_before_the_body_arrives() {
        let frame = sample_frame(FrameKind::Log, &compressible_body(), true);
        for (field, len) in [(12, FRAME_BODY_MAX as u32 + 1), (12, u32::MAX), (52, FRAME_BODY_MAX as u32 + 1)] {
            let mut header = frame[..FRAME_HEADER_SIZE].to_vec();
            header[field..field + 4].copy_from_slice(&len.to_le_bytes());
            reseal(&mut header);
            // Only the header is there: refused, not awaited.
            assert_eq!(parse(&header), Err(FrameError::TooLarge { len: len.into(), max: FRAME_BODY_MAX as u64 }));
        }
        // The largest body is accepted.
        let body = vec![0xA5u8; FRAME_BODY_MAX];
        let frame = sample_frame(FrameKind::Log, &body, false);
        assert_eq!(parse_whole(&frame).1, body);
    }

    #[test]
    fn garbage_never_panics_and_is_refused_by_64_bytes() {
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let mut inputs: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\nHost: mirror.example\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n".to_vec(),
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS client hello".repeat(4),
            vec![0u8; 200],
            vec![0xFFu8; 200],
        ];
        for _ in 0..5000 {
            let len = (rng.next() % 300) as usize;
            let mut input = rng.bytes(len);
            // Half of them start with the magic, so the header checks beyond it are exercised.
            if rng.next() % 2 == 0 && len >= 4 {
                input[..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
            }
            inputs.push(input);
        }
        for input in &inputs {
            for len in [4, 63, 64, input.len()] {
                let prefix = &input[..len.min(input.len())];
                let result = parse(prefix);
                if prefix.len() >= FRAME_HEADER_SIZE {
                    assert!(result.is_err(), "garbage accepted: {result:?}");
                } else if let Ok(parsed) = result {
                    assert_eq!(parsed, Parsed::Incomplete { need: FRAME_HEADER_SIZE });
                }
            }
            if input.len() >= 4 && input[..4] != FRAME_MAGIC.to_le_bytes() {
                assert!(matches!(parse(&input[..4]), Err(FrameError::BadMagic { .. })));
            }
        }
        let http = b"GET / HTTP/1.1\r\n";
        assert_eq!(parse(http), Err(FrameError::BadMagic { found: u32::from_le_bytes(*b"GET ") }));
    }

    #[test]
    fn garbage_bodies_in_valid_compressed_frames_never_panic() {
        let mut rng = XorShift(77);
        for _ in 0..2000 {
            let len = 1 + (rng.next() % 200) as usize;
            let body = rng.bytes(len);
            let raw_len = (rng.next() % 1000) as u32;
            let header = FrameHeader {
                version: 2,
                kind: FrameKind::Log,
                compressed: true,
                body_len: len as u32,
                db_id: DbId(1),
                epoch: Epoch(1),
                lsn_from: Lsn(0),
                lsn_to: Lsn(0),
                body_crc: crc32c::crc32c(&body),
                raw_len,
            };
            let mut frame = encode_header(&header).to_vec();
            frame.extend_from_slice(&body);
            assert_eq!(parse(&frame), Ok(Parsed::Frame { header, total_len: frame.len() }));
            if let Ok(raw) = body_bytes(&header, &frame) {
                assert_eq!(raw.len(), raw_len as usize);
            }
        }
    }

    #[test]
    fn error_messages_are_plain_english() {
        let err = FrameError::UnsupportedVersion { found: 7, min: 1, max: 2 };
        assert_eq!(err.to_string(), "unsupported protocol version 7: this build speaks versions 1 to 2");
        let err = FrameError::BadMagic { found: u32::from_le_bytes(*b"GET ") };
        assert_eq!(err.to_string(), "not a mirroring frame: magic 0x20544547, expected 0x524c4d4d");
    }
}

//! The mirroring endpoint's handshake: mutual challenge–response authentication with a shared key
//! (HMAC-SHA256; the key itself is never sent) and protocol version negotiation.
//!
//! Sans-IO: the caller parses frames with `frame::parse`, feeds each header and raw body to
//! `Dialer::on_frame` or `Acceptor::on_frame`, and sends the bytes they return.
//!
//! ```text
//! dialer (principal)                                acceptor (mirror endpoint)
//!   HELLO      version_min u16, version_max u16,  ─▶
//!              segment_size u64, flags u32 (bit 0: wants LZ4), nonce_dialer [32]
//!                                                 ◀─  CHALLENGE  version u16, nonce_acceptor [32],
//!                                                                proof_acceptor [32]
//!   (checks proof_acceptor: the mirror proves the key first, so a principal never talks to an
//!    impostor)
//!   PROOF      proof_dialer [32]                  ─▶
//!                                                     (checks proof_dialer; the caller decides)
//!                                                 ◀─  READY      lsn_hardened u64, epoch u64,
//!                                                                segment_size u64
//!                                                  or REFUSE     reason, UTF-8, at most 1 KiB
//! ```
//!
//! HELLO travels as a `PROTOCOL_VERSION_MIN` frame, so any peer that speaks at least the old
//! version can read it; the version is chosen from the two ranges in the bodies (the highest both
//! speak) and every later frame of the connection carries it. A refusal for want of a common
//! version also travels as `PROTOCOL_VERSION_MIN`.
//!
//! The proofs are, all integers little-endian:
//! ```text
//! proof_acceptor = HMAC(key, "mirrorlog-acceptor" ‖ db_id ‖ epoch ‖ nonce_dialer ‖ nonce_acceptor
//!                             ‖ version ‖ hello)
//! proof_dialer   = HMAC(key, "mirrorlog-dialer" ‖ db_id ‖ epoch ‖ nonce_acceptor ‖ nonce_dialer
//!                             ‖ version ‖ hello)
//! ```
//! where `db_id` and `epoch` are the HELLO header's and `hello` is the whole HELLO body. Binding
//! the HELLO body and epoch means that a HELLO altered in transit (a version range narrowed to
//! force an old version, LZ4 switched off, another role sequence) makes the proofs disagree.
//! Each side's fresh nonce makes a recorded proof useless for another connection.
//!
//! What this does not give: secrecy, or integrity of the frames after the handshake (they carry
//! CRC32C, which detects corruption, not an attacker on the path).

use std::fmt;
use std::io::{self, Read};
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::frame::{
    encode_frame, FrameHeader, FrameKind, PROTOCOL_VERSION, PROTOCOL_VERSION_LZ4, PROTOCOL_VERSION_MIN,
};
use crate::wal::{DbId, Epoch, Lsn};

type HmacSha256 = Hmac<Sha256>;

pub const NONCE_LEN: usize = 32;
pub const PROOF_LEN: usize = 32;
/// Shortest key `load_key` accepts.
pub const KEY_LEN_MIN: usize = 16;
/// Longest refusal reason, in bytes.
pub const REFUSE_REASON_MAX: usize = 1024;

const HELLO_BODY_LEN: usize = 2 + 2 + 8 + 4 + NONCE_LEN;
const CHALLENGE_BODY_LEN: usize = 2 + NONCE_LEN + PROOF_LEN;
const READY_BODY_LEN: usize = 8 + 8 + 8 + 8 + 4 + 4 + 4;
/// HELLO flag bit 0: the dialer wants LZ4-compressed log frames.
const HELLO_FLAG_LZ4: u32 = 1;

const LABEL_ACCEPTOR: &[u8] = b"mirrorlog-acceptor";
const LABEL_DIALER: &[u8] = b"mirrorlog-dialer";

const _: () = assert!(HELLO_BODY_LEN == 48 && CHALLENGE_BODY_LEN == 66 && READY_BODY_LEN == 44);

/// A range of protocol versions an endpoint speaks, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRange {
    pub min: u16,
    pub max: u16,
}

impl VersionRange {
    /// What this build speaks.
    pub const SUPPORTED: VersionRange = VersionRange { min: PROTOCOL_VERSION_MIN, max: PROTOCOL_VERSION };

    pub fn contains(self, version: u16) -> bool {
        (self.min..=self.max).contains(&version)
    }

    fn within_supported(self) -> bool {
        self.min <= self.max && VersionRange::SUPPORTED.contains(self.min) && VersionRange::SUPPORTED.contains(self.max)
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "version {}", self.min)
        } else {
            write!(f, "versions {} to {}", self.min, self.max)
        }
    }
}

/// The version two endpoints use: the highest both speak, or `None` when the ranges are disjoint.
pub fn negotiate(a: VersionRange, b: VersionRange) -> Option<u16> {
    let version = a.max.min(b.max);
    (a.contains(version) && b.contains(version)).then_some(version)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("expected a {expected:?} frame during the handshake, got {got:?}")]
    UnexpectedFrame { got: FrameKind, expected: FrameKind },
    #[error("{kind:?} frame body of {len} bytes, expected {expected}")]
    BadBodyLength { kind: FrameKind, len: usize, expected: usize },
    #[error("malformed Hello: {0}")]
    BadHello(&'static str),
    #[error(
        "the peer's proof does not verify: it does not hold the mirroring key, or the handshake was altered in transit"
    )]
    WrongKey,
    #[error("no common protocol version: this endpoint speaks {ours}, the peer speaks {theirs}")]
    NoCommonVersion { ours: VersionRange, theirs: VersionRange },
    #[error("the peer chose protocol version {chosen}, which this endpoint did not offer ({offered})")]
    VersionNotOffered { chosen: u16, offered: VersionRange },
    #[error("{kind:?} frame has version {found}, but the handshake chose version {negotiated}")]
    FrameVersionMismatch { kind: FrameKind, found: u16, negotiated: u16 },
    #[error("frame for database {found}, expected database {expected}")]
    WrongDatabase { expected: DbId, found: DbId },
    #[error("frame from {found}, expected {expected}")]
    WrongEpoch { expected: Epoch, found: Epoch },
    #[error("refused by the peer: {0}")]
    Refused(String),
    #[error("refusal reason of {len} bytes is longer than the limit of {REFUSE_REASON_MAX}")]
    RefuseTooLong { len: usize },
    #[error("the handshake is already over")]
    Finished,
}

/// What the acceptor's database reports to an authenticated dialer (the READY body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyInfo {
    pub lsn_hardened: Lsn,
    pub epoch: Epoch,
    pub segment_size: u64,
    /// The last record the acceptor hardened (it ends at `lsn_hardened`), so the dialer can check
    /// that both logs agree there before it continues from it.
    pub tail: LogTail,
}

/// Identity of one log record that both partners must hold alike: its position, kind, body
/// length and body checksum (the header checksum differs: each log binds its own batch LSNs).
/// All zero when the log holds no record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogTail {
    pub lsn: Lsn,
    pub body_crc: u32,
    pub body_len: u32,
    pub kind: u8,
}

impl ReadyInfo {
    pub fn encode(&self) -> [u8; READY_BODY_LEN] {
        let mut out = [0u8; READY_BODY_LEN];
        out[0..8].copy_from_slice(&self.lsn_hardened.0.to_le_bytes());
        out[8..16].copy_from_slice(&self.epoch.0.to_le_bytes());
        out[16..24].copy_from_slice(&self.segment_size.to_le_bytes());
        out[24..32].copy_from_slice(&self.tail.lsn.0.to_le_bytes());
        out[32..36].copy_from_slice(&self.tail.body_crc.to_le_bytes());
        out[36..40].copy_from_slice(&self.tail.body_len.to_le_bytes());
        out[40] = self.tail.kind;
        out
    }

    pub fn decode(body: &[u8]) -> Result<ReadyInfo, HandshakeError> {
        let body = exact::<READY_BODY_LEN>(FrameKind::Ready, body)?;
        Ok(ReadyInfo {
            lsn_hardened: Lsn(u64_at(body, 0)),
            epoch: Epoch(u64_at(body, 8)),
            segment_size: u64_at(body, 16),
            tail: LogTail {
                lsn: Lsn(u64_at(body, 24)),
                body_crc: u32::from_le_bytes(body[32..36].try_into().expect("4 bytes")),
                body_len: u32::from_le_bytes(body[36..40].try_into().expect("4 bytes")),
                kind: body[40],
            },
        })
    }
}

/// What an authenticated dialer asked for (from its HELLO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub db_id: DbId,
    /// The dialer's role sequence.
    pub epoch: Epoch,
    /// The negotiated protocol version.
    pub version: u16,
    pub segment_size: u64,
    /// The dialer asked for LZ4 log frames; they are used only if `version` has them
    /// (`PROTOCOL_VERSION_LZ4`), see `Hello::lz4`.
    pub wants_lz4: bool,
}

impl Hello {
    /// Whether log frames of this connection may be LZ4-compressed.
    pub fn lz4(&self) -> bool {
        self.wants_lz4 && self.version >= PROTOCOL_VERSION_LZ4
    }
}

/// The body as a fixed-size array, or `BadBodyLength`.
fn exact<const N: usize>(kind: FrameKind, body: &[u8]) -> Result<&[u8; N], HandshakeError> {
    body.try_into().map_err(|_| HandshakeError::BadBodyLength { kind, len: body.len(), expected: N })
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut eight = [0u8; 8];
    eight.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(eight)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn nonce_at(b: &[u8], at: usize) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&b[at..at + NONCE_LEN]);
    nonce
}

fn keyed_mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length (longer ones are hashed), so this never fails.
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// Everything both proofs cover besides their label and the order of the nonces.
struct Transcript<'a> {
    db_id: DbId,
    epoch: Epoch,
    version: u16,
    hello_body: &'a [u8; HELLO_BODY_LEN],
}

impl Transcript<'_> {
    fn nonce_dialer(&self) -> [u8; NONCE_LEN] {
        nonce_at(self.hello_body, HELLO_BODY_LEN - NONCE_LEN)
    }

    /// The keyed MAC over label ‖ db_id ‖ epoch ‖ first ‖ second ‖ version ‖ hello body.
    fn mac(&self, keyed: &HmacSha256, label: &[u8], first: &[u8; NONCE_LEN], second: &[u8; NONCE_LEN]) -> HmacSha256 {
        let mut mac = keyed.clone();
        mac.update(label);
        mac.update(&self.db_id.0.to_le_bytes());
        mac.update(&self.epoch.0.to_le_bytes());
        mac.update(first);
        mac.update(second);
        mac.update(&self.version.to_le_bytes());
        mac.update(self.hello_body);
        mac
    }

    fn acceptor_mac(&self, keyed: &HmacSha256, nonce_acceptor: &[u8; NONCE_LEN]) -> HmacSha256 {
        self.mac(keyed, LABEL_ACCEPTOR, &self.nonce_dialer(), nonce_acceptor)
    }

    fn dialer_mac(&self, keyed: &HmacSha256, nonce_acceptor: &[u8; NONCE_LEN]) -> HmacSha256 {
        self.mac(keyed, LABEL_DIALER, nonce_acceptor, &self.nonce_dialer())
    }
}

fn hello_body(
    versions: VersionRange,
    segment_size: u64,
    want_lz4: bool,
    nonce: &[u8; NONCE_LEN],
) -> [u8; HELLO_BODY_LEN] {
    let mut out = [0u8; HELLO_BODY_LEN];
    out[0..2].copy_from_slice(&versions.min.to_le_bytes());
    out[2..4].copy_from_slice(&versions.max.to_le_bytes());
    out[4..12].copy_from_slice(&segment_size.to_le_bytes());
    let flags = if want_lz4 { HELLO_FLAG_LZ4 } else { 0 };
    out[12..16].copy_from_slice(&flags.to_le_bytes());
    out[16..48].copy_from_slice(nonce);
    out
}

/// A handshake frame: no log range.
fn handshake_frame(version: u16, kind: FrameKind, db_id: DbId, epoch: Epoch, body: &[u8]) -> Vec<u8> {
    encode_frame(version, kind, db_id, epoch, Lsn::ZERO, Lsn::ZERO, body, false)
}

/// The READY frame the acceptor's caller sends once it accepts an authenticated dialer.
pub fn encode_ready(version: u16, db_id: DbId, epoch: Epoch, info: &ReadyInfo) -> Vec<u8> {
    handshake_frame(version, FrameKind::Ready, db_id, epoch, &info.encode())
}

/// A REFUSE frame; a reason longer than `REFUSE_REASON_MAX` bytes is cut at a character boundary.
pub fn encode_refuse(version: u16, db_id: DbId, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(REFUSE_REASON_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    handshake_frame(version, FrameKind::Refuse, db_id, Epoch(0), &reason.as_bytes()[..end])
}

/// The reason in a REFUSE body (invalid UTF-8 is replaced: the reason is only logged).
fn decode_refuse(body: &[u8]) -> HandshakeError {
    if body.len() > REFUSE_REASON_MAX {
        return HandshakeError::RefuseTooLong { len: body.len() };
    }
    HandshakeError::Refused(String::from_utf8_lossy(body).into_owned())
}

fn check_version(kind: FrameKind, header: &FrameHeader, negotiated: u16) -> Result<(), HandshakeError> {
    if header.version != negotiated {
        return Err(HandshakeError::FrameVersionMismatch { kind, found: header.version, negotiated });
    }
    Ok(())
}

fn check_db(header: &FrameHeader, expected: DbId) -> Result<(), HandshakeError> {
    if header.db_id != expected {
        return Err(HandshakeError::WrongDatabase { expected, found: header.db_id });
    }
    Ok(())
}

fn check_epoch(header: &FrameHeader, expected: Epoch) -> Result<(), HandshakeError> {
    if header.epoch != expected {
        return Err(HandshakeError::WrongEpoch { expected, found: header.epoch });
    }
    Ok(())
}

/// What the dialer's caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialerStep {
    /// Send these bytes (the PROOF) and wait for the next frame.
    Send(Vec<u8>),
    /// Authenticated both ways; the mirror's database reported `info`. Log frames of this
    /// connection use `version`.
    Ready { version: u16, info: ReadyInfo },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DialerState {
    AwaitChallenge,
    AwaitReady {
        version: u16,
    },
    /// Ready, refused or failed: the handshake takes no more frames.
    Over,
}

/// The connecting side (the principal). Holds the key only as a keyed HMAC state.
pub struct Dialer {
    keyed: HmacSha256,
    db_id: DbId,
    epoch: Epoch,
    versions: VersionRange,
    hello_body: [u8; HELLO_BODY_LEN],
    state: DialerState,
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialer").field("db_id", &self.db_id).field("state", &self.state).finish_non_exhaustive()
    }
}

impl Dialer {
    /// Starts a handshake for database `db_id` at role sequence `epoch`, offering every version
    /// this build speaks; returns the dialer and the HELLO frame to send. `nonce` must be fresh
    /// (`random_nonce`).
    pub fn start(
        key: &[u8],
        db_id: DbId,
        epoch: Epoch,
        segment_size: u64,
        want_lz4: bool,
        nonce: [u8; NONCE_LEN],
    ) -> (Dialer, Vec<u8>) {
        Dialer::start_with_versions(key, db_id, epoch, segment_size, want_lz4, nonce, VersionRange::SUPPORTED)
    }

    /// `start`, offering only `versions` (which must lie within `VersionRange::SUPPORTED`): for
    /// tests, and for holding a new build to the old version during a rolling upgrade.
    pub fn start_with_versions(
        key: &[u8],
        db_id: DbId,
        epoch: Epoch,
        segment_size: u64,
        want_lz4: bool,
        nonce: [u8; NONCE_LEN],
        versions: VersionRange,
    ) -> (Dialer, Vec<u8>) {
        assert!(versions.within_supported(), "{versions} not within {}", VersionRange::SUPPORTED);
        let body = hello_body(versions, segment_size, want_lz4, &nonce);
        let frame = handshake_frame(PROTOCOL_VERSION_MIN, FrameKind::Hello, db_id, epoch, &body);
        let dialer = Dialer {
            keyed: keyed_mac(key),
            db_id,
            epoch,
            versions,
            hello_body: body,
            state: DialerState::AwaitChallenge,
        };
        (dialer, frame)
    }

    /// Feeds one frame (its header and raw body). After an error or `Ready`, the handshake is
    /// over and every further frame is `Finished`.
    pub fn on_frame(&mut self, header: &FrameHeader, body: &[u8]) -> Result<DialerStep, HandshakeError> {
        let state = std::mem::replace(&mut self.state, DialerState::Over);
        let step = match (state, header.kind) {
            (DialerState::Over, _) => return Err(HandshakeError::Finished),
            (_, FrameKind::Refuse) => return Err(decode_refuse(body)),
            (DialerState::AwaitChallenge, FrameKind::Challenge) => self.on_challenge(header, body)?,
            (DialerState::AwaitReady { version }, FrameKind::Ready) => {
                check_version(FrameKind::Ready, header, version)?;
                check_db(header, self.db_id)?;
                DialerStep::Ready { version, info: ReadyInfo::decode(body)? }
            }
            (DialerState::AwaitChallenge, got) => {
                return Err(HandshakeError::UnexpectedFrame { got, expected: FrameKind::Challenge })
            }
            (DialerState::AwaitReady { .. }, got) => {
                return Err(HandshakeError::UnexpectedFrame { got, expected: FrameKind::Ready })
            }
        };
        Ok(step)
    }

    /// Checks the acceptor's proof, then answers with ours.
    fn on_challenge(&mut self, header: &FrameHeader, body: &[u8]) -> Result<DialerStep, HandshakeError> {
        let body = exact::<CHALLENGE_BODY_LEN>(FrameKind::Challenge, body)?;
        let version = u16_at(body, 0);
        if !self.versions.contains(version) {
            return Err(HandshakeError::VersionNotOffered { chosen: version, offered: self.versions });
        }
        check_version(FrameKind::Challenge, header, version)?;
        check_db(header, self.db_id)?;
        check_epoch(header, self.epoch)?;
        let nonce_acceptor = nonce_at(body, 2);
        let proof_acceptor = &body[2 + NONCE_LEN..];

        let transcript = Transcript { db_id: self.db_id, epoch: self.epoch, version, hello_body: &self.hello_body };
        // `verify_slice` compares in constant time.
        transcript
            .acceptor_mac(&self.keyed, &nonce_acceptor)
            .verify_slice(proof_acceptor)
            .map_err(|_| HandshakeError::WrongKey)?;

        let proof_dialer = transcript.dialer_mac(&self.keyed, &nonce_acceptor).finalize().into_bytes();
        self.state = DialerState::AwaitReady { version };
        Ok(DialerStep::Send(handshake_frame(version, FrameKind::Proof, self.db_id, self.epoch, &proof_dialer)))
    }
}

/// What the acceptor's caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptorStep {
    /// Send these bytes (the CHALLENGE) and wait for the next frame.
    Send(Vec<u8>),
    /// The dialer proved the key. The caller decides, then sends `encode_ready` or
    /// `encode_refuse` at `hello.version`.
    Authenticated(Hello),
    /// The dialer cannot be served: send `frame` (a REFUSE saying why), log `error`, and close.
    /// The handshake is over.
    Refuse { frame: Vec<u8>, error: HandshakeError },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptorState {
    AwaitHello,
    AwaitProof {
        hello: Hello,
        hello_body: [u8; HELLO_BODY_LEN],
    },
    /// Authenticated, refused or failed: the handshake takes no more frames.
    Over,
}

/// The accepting side (the mirror's endpoint). Holds the key only as a keyed HMAC state.
pub struct Acceptor {
    keyed: HmacSha256,
    nonce: [u8; NONCE_LEN],
    versions: VersionRange,
    state: AcceptorState,
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acceptor").field("state", &self.state).finish_non_exhaustive()
    }
}

impl Acceptor {
    /// An acceptor speaking every version this build speaks. `nonce` must be fresh
    /// (`random_nonce`).
    pub fn new(key: &[u8], nonce: [u8; NONCE_LEN]) -> Acceptor {
        Acceptor::with_versions(key, nonce, VersionRange::SUPPORTED)
    }

    /// `new`, speaking only `versions` (which must lie within `VersionRange::SUPPORTED`).
    pub fn with_versions(key: &[u8], nonce: [u8; NONCE_LEN], versions: VersionRange) -> Acceptor {
        assert!(versions.within_supported(), "{versions} not within {}", VersionRange::SUPPORTED);
        Acceptor { keyed: keyed_mac(key), nonce, versions, state: AcceptorState::AwaitHello }
    }

    /// Feeds one frame (its header and raw body). After an error, `Authenticated` or `Refuse`,
    /// the handshake is over and every further frame is `Finished`.
    pub fn on_frame(&mut self, header: &FrameHeader, body: &[u8]) -> Result<AcceptorStep, HandshakeError> {
        let state = std::mem::replace(&mut self.state, AcceptorState::Over);
        match (state, header.kind) {
            (AcceptorState::Over, _) => Err(HandshakeError::Finished),
            (_, FrameKind::Refuse) => Err(decode_refuse(body)),
            (AcceptorState::AwaitHello, FrameKind::Hello) => self.on_hello(header, body),
            (AcceptorState::AwaitProof { hello, hello_body }, FrameKind::Proof) => {
                Self::on_proof(&self.keyed, &self.nonce, hello, &hello_body, header, body)
            }
            (AcceptorState::AwaitHello, got) => {
                Err(HandshakeError::UnexpectedFrame { got, expected: FrameKind::Hello })
            }
            (AcceptorState::AwaitProof { .. }, got) => {
                Err(HandshakeError::UnexpectedFrame { got, expected: FrameKind::Proof })
            }
        }
    }

    /// Chooses the version and proves the key.
    fn on_hello(&mut self, header: &FrameHeader, body: &[u8]) -> Result<AcceptorStep, HandshakeError> {
        let hello_body = *exact::<HELLO_BODY_LEN>(FrameKind::Hello, body)?;
        let theirs = VersionRange { min: u16_at(&hello_body, 0), max: u16_at(&hello_body, 2) };
        if theirs.min > theirs.max {
            return Err(HandshakeError::BadHello("empty version range"));
        }
        let segment_size = u64_at(&hello_body, 4);
        let flags = u32::from_le_bytes([hello_body[12], hello_body[13], hello_body[14], hello_body[15]]);
        if flags & !HELLO_FLAG_LZ4 != 0 {
            return Err(HandshakeError::BadHello("unknown flags"));
        }

        let Some(version) = negotiate(self.versions, theirs) else {
            let error = HandshakeError::NoCommonVersion { ours: self.versions, theirs };
            let frame = encode_refuse(PROTOCOL_VERSION_MIN, header.db_id, &error.to_string());
            return Ok(AcceptorStep::Refuse { frame, error });
        };
        let hello = Hello {
            db_id: header.db_id,
            epoch: header.epoch,
            version,
            segment_size,
            wants_lz4: flags & HELLO_FLAG_LZ4 != 0,
        };
        let transcript = Transcript { db_id: hello.db_id, epoch: hello.epoch, version, hello_body: &hello_body };
        let proof = transcript.acceptor_mac(&self.keyed, &self.nonce).finalize().into_bytes();

        let mut challenge = [0u8; CHALLENGE_BODY_LEN];
        challenge[0..2].copy_from_slice(&version.to_le_bytes());
        challenge[2..2 + NONCE_LEN].copy_from_slice(&self.nonce);
        challenge[2 + NONCE_LEN..].copy_from_slice(&proof);
        // The header echoes the dialer's database and role sequence.
        let frame = handshake_frame(version, FrameKind::Challenge, hello.db_id, hello.epoch, &challenge);
        self.state = AcceptorState::AwaitProof { hello, hello_body };
        Ok(AcceptorStep::Send(frame))
    }

    /// Checks the dialer's proof.
    fn on_proof(
        keyed: &HmacSha256,
        nonce: &[u8; NONCE_LEN],
        hello: Hello,
        hello_body: &[u8; HELLO_BODY_LEN],
        header: &FrameHeader,
        body: &[u8],
    ) -> Result<AcceptorStep, HandshakeError> {
        let proof = exact::<PROOF_LEN>(FrameKind::Proof, body)?;
        check_version(FrameKind::Proof, header, hello.version)?;
        check_db(header, hello.db_id)?;
        check_epoch(header, hello.epoch)?;
        let transcript = Transcript { db_id: hello.db_id, epoch: hello.epoch, version: hello.version, hello_body };
        // `verify_slice` compares in constant time.
        transcript.dialer_mac(keyed, nonce).verify_slice(proof).map_err(|_| HandshakeError::WrongKey)?;
        Ok(AcceptorStep::Authenticated(hello))
    }
}

/// 32 bytes from the kernel's random source: getrandom(2), or /dev/urandom where the system call
/// is missing. Panics if neither works: without randomness the handshake cannot be made safe.
pub fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    if getrandom_fill(&mut nonce).is_err() {
        std::fs::File::open("/dev/urandom")
            .and_then(|mut urandom| urandom.read_exact(&mut nonce))
            .expect("no randomness: getrandom(2) and /dev/urandom both failed");
    }
    nonce
}

/// Fills `buf` with getrandom(2) (flags 0: the urandom source, blocking only until it is first
/// seeded at boot; see getrandom(2)). Retries interrupted and partial calls.
fn getrandom_fill(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a live, writable buffer of `rest.len()` bytes, exclusively borrowed for
        // the call; getrandom(2) writes at most `buflen` bytes into it and keeps no reference.
        let got = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if got < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        filled += got as usize;
    }
    Ok(())
}

/// Reads a key file: the key is the file's bytes, without one trailing newline (`\n` or `\r\n`),
/// so `openssl rand -hex 32 > key` makes a good one. Refuses a key shorter than `KEY_LEN_MIN`.
pub fn load_key(path: &Path) -> Result<Vec<u8>, String> {
    let mut key =
        std::fs::read(path).map_err(|err| format!("cannot read the mirroring key file {}: {err}", path.display()))?;
    if key.ends_with(b"\n") {
        key.pop();
        if key.ends_with(b"\r") {
            key.pop();
        }
    }
    if key.len() < KEY_LEN_MIN {
        return Err(format!(
            "the mirroring key in {} is {} bytes long; a key needs at least {KEY_LEN_MIN} (for example \
             `openssl rand -hex 32`)",
            path.display(),
            key.len()
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::{body_bytes, parse, Parsed};

    const KEY: &[u8] = b"the-shared-mirroring-key-0123456789abcdef";
    const DB: DbId = DbId(42);
    const EPOCH: Epoch = Epoch(7);
    const SEGMENT: u64 = 64 << 20;
    const INFO: ReadyInfo = ReadyInfo {
        lsn_hardened: Lsn(123_456),
        epoch: Epoch(7),
        segment_size: SEGMENT,
        tail: LogTail { lsn: Lsn(123_400), body_crc: 0xdead_beef, body_len: 10, kind: 18 },
    };

    /// Parses bytes as a receiver would: one whole frame, its header and raw body.
    fn open(frame: &[u8]) -> (FrameHeader, Vec<u8>) {
        match parse(frame).unwrap() {
            Parsed::Frame { header, total_len } => {
                assert_eq!(total_len, frame.len());
                (header, body_bytes(&header, frame).unwrap().into_owned())
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Every frame of one handshake, in order, and the outcome on both sides.
    struct Run {
        frames: Vec<Vec<u8>>,
        hello: Hello,
        dialer_version: u16,
        info: ReadyInfo,
    }

    fn run(dialer_key: &[u8], acceptor_key: &[u8], ours: VersionRange, theirs: VersionRange) -> Run {
        let (mut dialer, hello_frame) =
            Dialer::start_with_versions(dialer_key, DB, EPOCH, SEGMENT, true, [1; 32], ours);
        let mut acceptor = Acceptor::with_versions(acceptor_key, [2; 32], theirs);
        let mut frames = vec![hello_frame.clone()];

        let (h, b) = open(&hello_frame);
        assert_eq!(h.version, PROTOCOL_VERSION_MIN, "HELLO travels at the oldest version");
        let AcceptorStep::Send(challenge) = acceptor.on_frame(&h, &b).unwrap() else { panic!("no challenge") };
        frames.push(challenge.clone());

        let (h, b) = open(&challenge);
        let DialerStep::Send(proof) = dialer.on_frame(&h, &b).unwrap() else { panic!("no proof") };
        frames.push(proof.clone());

        let (h, b) = open(&proof);
        let AcceptorStep::Authenticated(hello) = acceptor.on_frame(&h, &b).unwrap() else { panic!("no auth") };
        let ready = encode_ready(hello.version, hello.db_id, INFO.epoch, &INFO);
        frames.push(ready.clone());

        let (h, b) = open(&ready);
        let DialerStep::Ready { version, info } = dialer.on_frame(&h, &b).unwrap() else { panic!("not ready") };
        // Both are over now.
        assert_eq!(dialer.on_frame(&h, &b), Err(HandshakeError::Finished));
        assert_eq!(acceptor.on_frame(&h, &b), Err(HandshakeError::Finished));
        Run { frames, hello, dialer_version: version, info }
    }

    #[test]
    fn full_handshake_succeeds_and_both_sides_agree() {
        let run = run(KEY, KEY, VersionRange::SUPPORTED, VersionRange::SUPPORTED);
        assert_eq!(
            run.hello,
            Hello { db_id: DB, epoch: EPOCH, version: PROTOCOL_VERSION, segment_size: SEGMENT, wants_lz4: true }
        );
        assert!(run.hello.lz4());
        assert_eq!(run.dialer_version, PROTOCOL_VERSION);
        assert_eq!(run.info, INFO);
        // Every frame after HELLO carries the negotiated version.
        for frame in &run.frames[1..] {
            assert_eq!(open(frame).0.version, PROTOCOL_VERSION);
        }
    }

    #[test]
    fn the_default_constructors_negotiate_the_current_version() {
        let (mut dialer, hello) = Dialer::start(KEY, DB, EPOCH, SEGMENT, false, random_nonce());
        let mut acceptor = Acceptor::new(KEY, random_nonce());
        let (h, b) = open(&hello);
        let AcceptorStep::Send(challenge) = acceptor.on_frame(&h, &b).unwrap() else { panic!() };
        let (h, b) = open(&challenge);
        let DialerStep::Send(proof) = dialer.on_frame(&h, &b).unwrap() else { panic!() };
        let (h, b) = open(&proof);
        let AcceptorStep::Authenticated(hello) = acceptor.on_frame(&h, &b).unwrap() else { panic!() };
        assert_eq!(hello.version, PROTOCOL_VERSION);
        assert!(!hello.wants_lz4 && !hello.lz4());
    }

    #[test]
    fn version_ranges_negotiate_the_highest_common_version() {
        let v = |min, max| VersionRange { min, max };
        assert_eq!(negotiate(v(1, 1), v(1, 2)), Some(1));
        assert_eq!(negotiate(v(1, 2), v(1, 1)), Some(1));
        assert_eq!(negotiate(v(1, 2), v(1, 2)), Some(2));
        assert_eq!(negotiate(v(2, 2), v(1, 2)), Some(2));
        assert_eq!(negotiate(v(3, 4), v(1, 2)), None);
        assert_eq!(negotiate(v(1, 2), v(3, 4)), None);
        assert_eq!(negotiate(v(2, 5), v(1, 3)), Some(3));

        // 1..=1 against 1..=2, both ways round: version 1, and no LZ4 at version 1.
        for (ours, theirs) in [(v(1, 1), v(1, 2)), (v(1, 2), v(1, 1))] {
            let run = run(KEY, KEY, ours, theirs);
            assert_eq!((run.hello.version, run.dialer_version), (1, 1));
            assert!(run.hello.wants_lz4 && !run.hello.lz4());
            assert!(run.frames.iter().all(|frame| open(frame).0.version == 1));
        }
    }

    #[test]
    fn disjoint_versions_are_refused_naming_both_ranges() {
        // A future dialer speaking 4..=5 (its HELLO still travels as version 1).
        let future = hello_body(VersionRange { min: 4, max: 5 }, SEGMENT, false, &[9; 32]);
        let hello = handshake_frame(1, FrameKind::Hello, DB, EPOCH, &future);
        let mut acceptor = Acceptor::new(KEY, [2; 32]);
        let (h, b) = open(&hello);
        let AcceptorStep::Refuse { frame, error } = acceptor.on_frame(&h, &b).unwrap() else { panic!("not refused") };
        let expected =
            "no common protocol version: this endpoint speaks versions 1 to 3, the peer speaks versions 4 to 5";
        assert_eq!(error.to_string(), expected);
        let (h, b) = open(&frame);
        assert_eq!((h.kind, h.version, h.db_id), (FrameKind::Refuse, PROTOCOL_VERSION_MIN, DB));
        assert_eq!(b, expected.as_bytes());
        assert_eq!(acceptor.on_frame(&h, &b), Err(HandshakeError::Finished));

        // A dialer receiving that refusal reports it.
        let (mut dialer, _) = Dialer::start(KEY, DB, EPOCH, SEGMENT, false, [1; 32]);
        assert_eq!(dialer.on_frame(&h, &b), Err(HandshakeError::Refused(expected.to_string())));
    }

    #[test]
    fn wrong_key_fails_on_the_dialer() {
        let (mut dialer, hello) =
            Dialer::start(b"the dialer's key, not the mirror's", DB, EPOCH, SEGMENT, false, [1; 32]);
        let mut acceptor = Acceptor::new(KEY, [2; 32]);
        let (h, b) = open(&hello);
        let AcceptorStep::Send(challenge) = acceptor.on_frame(&h, &b).unwrap() else { panic!() };
        let (h, b) = open(&challenge);
        assert_eq!(dialer.on_frame(&h, &b), Err(HandshakeError::WrongKey));
        // The dialer sent nothing and is done.
        assert_eq!(dialer.on_frame(&h, &b), Err(HandshakeError::Finished));
    }

    /// Runs HELLO and CHALLENGE, then hands the acceptor `proof_body` as the PROOF.
    fn acceptor_given_proof(proof_body: &[u8]) -> Result<AcceptorStep, HandshakeError> {
        let (_dialer, hello) = Dialer::start(KEY, DB, EPOCH, SEGMENT, false, [1; 32]);
        let mut acceptor = Acceptor::new(KEY, [2; 32]);
        let (h, b) = open(&hello);
        acceptor.on_frame(&h, &b).unwrap();
        let forged = handshake_frame(PROTOCOL_VERSION, FrameKind::Proof, DB, EPOCH, proof_body);
        let (h, b) = open(&forged);
        acceptor.on_frame(&h, &b)
    }

    #[test]
    fn forged_or_replayed_dialer_proof_fails_on_the_acceptor() {
        assert_eq!(acceptor_given_proof(&[0xAB; 32]), Err(HandshakeError::WrongKey));

        // A proof recorded from another connection (other nonces) does not verify either.
        let recorded = run(KEY, KEY, VersionRange::SUPPORTED, VersionRange::SUPPORTED);
        let other = [3u8; 32];
        let (mut dialer, hello) = Dialer::start(KEY, DB, EPOCH, SEGMENT, true, [1; 32]);
        let mut acceptor = Acceptor::new(KEY, other);
        let (h, b) = open(&hello);
        let AcceptorStep::Send(challenge) = acceptor.on_frame(&h, &b).unwrap() else { panic!() };
        let (h, b) = open(&challenge);
        assert!(matches!(dialer.on_frame(&h, &b), Ok(DialerStep::Send(_))));
        let (h, b) = open(&recorded.frames[2]);
        assert_eq!(acceptor.on_frame(&h, &b), Err(HandshakeError::WrongKey));

        // A dialer holding the wrong key gets past nothing: its proof is refused.
        let mut acceptor = Acceptor::new(KEY, [2; 32]);
        let (wrong, hello) = Dialer::start(b"another key entirely, 0123456", DB, EPOCH, SEGMENT, false, [1; 32]);
        let transcript =
            Transcript { db_id: DB, epoch: EPOCH, version: PROTOCOL_VERSION, hello_body: &wrong.hello_body };
        let proof = transcript.dialer_mac(&wrong.keyed, &[2; 32]).finalize().into_bytes();
        let (h, b) = open(&hello);
        acceptor.on_frame(&h, &b).unwrap();
        let (h, b) = open(&handshake_frame(PROTOCOL_VERSION, FrameKind::Proof, DB, EPOCH, &proof));
        assert_eq!(acceptor.on_frame(&h, &b), Err(HandshakeError::WrongKey));
    }

    #[test]
    fn a_hello_altered_in_transit_fails_the_proof() {
        // Narrowing the dialer's range to force version 1 (a downgrade), or another epoch.
        for alter in [0, 1] {
            let (mut dialer, hello) = Dialer::start(KEY, DB, EPOCH, SEGMENT, true, [1; 32]);
            let mut acceptor = Acceptor::new(KEY, [2; 32]);
            let (mut h, mut b) = open(&hello);
            if alter == 0 {
                b[2..4].copy_from_slice(&1u16.to_le_bytes());
            } else {
                h.epoch = Epoch(EPOCH.0 + 1);
            }
            let AcceptorStep::Send(challenge) = acceptor.on_frame(&h, &b).unwrap() else { panic!() };
            let (mut h, b) = open(&challenge);
            h.epoch = EPOCH; // the attacker also restores the echoed epoch
            assert_eq!(dialer.on_frame(&h, &b), Err(HandshakeError::WrongKey), "alteration {alter}");
        }
    }

    #[test]
    fn frames_out_of_order_are_refused() {
        let (mut dialer, hello) = Dialer::start(KEY, DB, EPOCH, SEGMENT, false, [1; 32]);
        let proof_frame = handshake_frame(2, FrameKind::Proof, DB, EPOCH, &[0; 32]);
        let ready_frame = encode_ready(2, DB, EPOCH, &INFO);
        let log_frame = encode_frame(2, FrameKind::Log, DB, EPOCH, Lsn(0), Lsn(3), b"abc", false);

        // The acceptor wants HELLO first.
        for frame in [&proof_frame, &ready_frame, &log_frame] {
            let mut acceptor = Acceptor::new(KEY, [2; 32]);
            let (h, b) = open(frame);
            assert_eq!(
                acceptor.on_frame(&h, &b),
                Err(HandshakeError::UnexpectedFrame { got: h.kind, expected: FrameKind::Hello })
            );
            assert_eq!(acceptor.on_frame(&h, &b), Err(HandshakeError::Finished));
        }
        // The dialer wants CHALLENGE first.
        let (h, b) = open(&ready_frame);
        assert_eq!(
            dialer.on_frame(&h, &b),
            Err(HandshakeError::UnexpectedFrame { got: FrameKind::Ready, expected: FrameKind::Challenge })
        );
        // A second HELLO instead of PROOF.
        let mut acceptor = Acceptor::new(KEY, [2; 32]);
        let (h, b) = open(&hello);
        acceptor.on_frame(&h, &b).unwrap();
        assert_eq!(
            acceptor.on_frame(&h, &b),
            Err(HandshakeError::UnexpectedFrame { got: FrameKind::Hello, expected: FrameKind::Proof })
        );
        // A second CHALLENGE instead of READY.
        let (mut dialer, hello) = Dialer::start(KEY, DB, EPOCH, SEGMENT, false, [1; 32]);
        let mut acceptor = Acceptor::new(KEY, [2; 32]);
        let (h, b) = open(&hello);
        let AcceptorStep::Send(challenge) = acceptor.on_frame(&h, &b).unwrap() else { panic!() };
        let (h, b) = open(&challenge);
        dialer.on_frame(&h, &b).unwrap();
        assert_eq!(
            dialer.on_frame(&h, &b),
            Err(HandshakeError::UnexpectedFrame { got: FrameKind::Challenge, expected: FrameKind::Ready })
        );
    }

    #[test]
    fn identity_and_version_mismatches_are_refused() {
        let (mut dialer, hello) = Dialer::start(KEY, DB, EPOCH, SEGMENT, false, [1; 32]);
        let mut acceptor = Acceptor::new(KEY, [2; 32]);
        let (h, b) = open(&hello);
        let AcceptorStep::Send(challenge) = acceptor.on_frame(&h, &b).unwrap() else { panic!() };
        let (h, b) = open(&challenge);
        for (header, expected) in [
            (FrameHeader { db_id: DbId(43), ..h }, HandshakeError::WrongDatabase { expected: DB, found: DbId(43) }),
            (FrameHeader { epoch: Epoch(6), ..h }, HandshakeError::WrongEpoch { expected: EPOCH, found: Epoch(6) }),
            (
                FrameHeader { version: 1, ..h },
                HandshakeError::FrameVersionMismatch {
                    kind: FrameKind::Challenge,
                    found: 1,
                    negotiated: PROTOCOL_VERSION,
                },
            ),
        ] {
            let (mut fresh, _) = Dialer::start(KEY, DB, EPOCH, SEGMENT, false, [1; 32]);
            assert_eq!(fresh.on_frame(&header, &b), Err(expected));
        }
        // A version the dialer did not offer.
        let (mut narrow, _) =
            Dialer::start_with_versions(KEY, DB, EPOCH, SEGMENT, false, [1; 32], VersionRange { min: 1, max: 1 });
        assert_eq!(
            narrow.on_frame(&h, &b),
            Err(HandshakeError::VersionNotOffered {
                chosen: PROTOCOL_VERSION,
                offered: VersionRange { min: 1, max: 1 }
            })
        );
        // READY for another database.
        let DialerStep::Send(_) = dialer.on_frame(&h, &b).unwrap() else { panic!() };
        let (h, b) = open(&encode_ready(PROTOCOL_VERSION, DbId(5), EPOCH, &INFO));
        assert_eq!(dialer.on_frame(&h, &b), Err(HandshakeError::WrongDatabase { expected: DB, found: DbId(5) }));
    }

    #[test]
    fn malformed_hello_is_refused() {
        let mut acceptor = Acceptor::new(KEY, [2; 32]);
        let empty = hello_body(VersionRange { min: 2, max: 1 }, SEGMENT, false, &[1; 32]);
        let (h, b) = open(&handshake_frame(1, FrameKind::Hello, DB, EPOCH, &empty));
        assert_eq!(acceptor.on_frame(&h, &b), Err(HandshakeError::BadHello("empty version range")));

        let mut acceptor = Acceptor::new(KEY, [2; 32]);
        let mut flags = hello_body(VersionRange::SUPPORTED, SEGMENT, true, &[1; 32]);
        flags[12] |= 0x10;
        let (h, b) = open(&handshake_frame(1, FrameKind::Hello, DB, EPOCH, &flags));
        assert_eq!(acceptor.on_frame(&h, &b), Err(HandshakeError::BadHello("unknown flags")));
    }

    #[test]
    fn truncated_or_extended_bodies_are_typed_errors() {
        let good = run(KEY, KEY, VersionRange::SUPPORTED, VersionRange::SUPPORTED);
        for (index, frame) in good.frames.iter().enumerate() {
            let (h, body) = open(frame);
            let mut lengths: Vec<usize> = (0..body.len()).collect();
            lengths.push(body.len() + 1);
            for len in lengths {
                let mut altered = body.clone();
                altered.resize(len, 0);
                let expected = HandshakeError::BadBodyLength { kind: h.kind, len, expected: body.len() };
                let result = match index {
                    0 => Acceptor::new(KEY, [2; 32]).on_frame(&h, &altered).map(|_| ()),
                    1 => Dialer::start(KEY, DB, EPOCH, SEGMENT, true, [1; 32]).0.on_frame(&h, &altered).map(|_| ()),
                    2 => {
                        let mut acceptor = Acceptor::new(KEY, [2; 32]);
                        let (hh, hb) = open(&good.frames[0]);
                        acceptor.on_frame(&hh, &hb).unwrap();
                        acceptor.on_frame(&h, &altered).map(|_| ())
                    }
                    _ => {
                        assert_eq!(ReadyInfo::decode(&altered), Err(expected.clone()));
                        continue;
                    }
                };
                assert_eq!(result, Err(expected), "frame {index}, len {len}");
            }
        }
        // An overlong refusal.
        let (mut dialer, _) = Dialer::start(KEY, DB, EPOCH, SEGMENT, false, [1; 32]);
        let long = handshake_frame(1, FrameKind::Refuse, DB, Epoch(0), &[b'x'; REFUSE_REASON_MAX + 1]);
        let (h, b) = open(&long);
        assert_eq!(dialer.on_frame(&h, &b), Err(HandshakeError::RefuseTooLong { len: REFUSE_REASON_MAX + 1 }));
    }

    #[test]
    fn refuse_reasons_are_capped_at_a_character_boundary() {
        let reason = "é".repeat(REFUSE_REASON_MAX); // two bytes each
        let (h, b) = open(&encode_refuse(2, DB, &reason));
        assert_eq!(h.kind, FrameKind::Refuse);
        assert_eq!(b.len(), REFUSE_REASON_MAX);
        let (_, b) = open(&encode_refuse(2, DB, &format!("x{reason}")));
        assert_eq!(b.len(), REFUSE_REASON_MAX - 1);
        assert!(std::str::from_utf8(&b).is_ok());
    }

    #[test]
    fn the_key_never_appears_in_any_frame() {
        let run = run(KEY, KEY, VersionRange::SUPPORTED, VersionRange::SUPPORTED);
        let wrong = acceptor_given_proof(&[0; 32]);
        assert_eq!(wrong, Err(HandshakeError::WrongKey));
        let all: Vec<u8> = run.frames.concat();
        // No 8-byte piece of the key, let alone the whole, anywhere in what was sent.
        for piece in KEY.windows(8) {
            assert!(!all.windows(piece.len()).any(|w| w == piece), "key bytes {piece:?} on the wire");
        }
        // The Debug forms do not show it either.
        let (dialer, _) = Dialer::start(KEY, DB, EPOCH, SEGMENT, false, [1; 32]);
        let shown = format!("{dialer:?} {:?}", Acceptor::new(KEY, [2; 32]));
        assert!(!shown.contains(std::str::from_utf8(&KEY[..8]).unwrap()), "{shown}");
    }

    #[test]
    fn nonces_are_random() {
        let a = random_nonce();
        let b = random_nonce();
        assert_ne!(a, b);
        assert_ne!(a, [0; 32]);
    }

    #[test]
    fn load_key_trims_one_newline_and_refuses_short_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, b"0123456789abcdef0123\r\n").unwrap();
        assert_eq!(load_key(&path).unwrap(), b"0123456789abcdef0123");
        std::fs::write(&path, b"0123456789abcdef\n\n").unwrap();
        assert_eq!(load_key(&path).unwrap(), b"0123456789abcdef\n");

        std::fs::write(&path, b"short-key\n").unwrap();
        let err = load_key(&path).unwrap_err();
        assert!(err.contains("is 9 bytes long; a key needs at least 16"), "{err}");
        let err = load_key(&dir.path().join("missing")).unwrap_err();
        assert!(err.starts_with("cannot read the mirroring key file"), "{err}");
    }
}

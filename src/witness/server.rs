//! `mirrorlog witness`: the witness process. It authenticates partners like a mirroring
//! endpoint (same key, same handshake), answers their reports with the rules of
//! `witness::state`, and persists what it granted before any answer that depends on it.
//!
//! The witness is not on the data path (a few small frames per partner per second), so it runs
//! on plain threads with blocking sockets, one per connection; the rules themselves are sans-IO.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::wal::{Epoch, Lsn};
use crate::wire::frame::{self, FrameKind, Parsed};
use crate::wire::handshake::{self, Acceptor, AcceptorStep, ReadyInfo};
use crate::witness::report;
use crate::witness::state::{Grants, SessionKey, Witness};

#[derive(Debug, Clone)]
pub struct WitnessConfig {
    pub endpoint: SocketAddr,
    pub data: PathBuf,
    pub key: Arc<Vec<u8>>,
    /// Must match the partners' (a grant waits this long after the principal was last heard).
    pub partner_timeout: Duration,
    /// Where Redis Sentinel's discovery commands are answered (none: not at all).
    pub sentinel: Option<SocketAddr>,
}

struct Shared {
    witness: Arc<Mutex<Witness>>,
    file: PathBuf,
    config: WitnessConfig,
}

/// Runs the witness until `stop`; `on_ready` gets the bound address.
pub fn run(
    config: WitnessConfig,
    stop: Arc<AtomicBool>,
    on_ready: impl FnOnce(SocketAddr, Option<SocketAddr>),
) -> Result<()> {
    std::fs::create_dir_all(&config.data).context(|| format!("create {}", config.data.display()))?;
    let file = config.data.join("witness.state");
    let witness = Witness::restore(load(&file)?, Instant::now());
    let listener = TcpListener::bind(config.endpoint).context(|| format!("bind {}", config.endpoint))?;
    listener.set_nonblocking(true).context(|| "listener non-blocking".into())?;
    let addr = listener.local_addr().context(|| "local address".into())?;
    let witness = Arc::new(Mutex::new(witness));
    let sentinel = match config.sentinel {
        Some(at) => Some(crate::witness::sentinel::start(at, witness.clone(), stop.clone())?),
        None => None,
    };
    let shared = Arc::new(Shared { witness, file, config });
    on_ready(addr, sentinel);
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve(stream, &shared, &stop) {
                        eprintln!("mirrorlog witness: connection with {peer} closed: {e}");
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                eprintln!("mirrorlog witness: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Ok(())
}

/// Reads whole frames from `stream` into `buf`, returning the next one (header, raw body).
fn next_frame(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    stop: &AtomicBool,
) -> std::result::Result<(frame::FrameHeader, Vec<u8>), String> {
    loop {
        match frame::parse(buf).map_err(|e| format!("bad frame: {e}"))? {
            Parsed::Frame { header, total_len } => {
                let body = frame::body_bytes(&header, &buf[..total_len]).map_err(|e| e.to_string())?.into_owned();
                buf.drain(..total_len);
                return Ok((header, body));
            }
            Parsed::Incomplete { .. } => {
                if stop.load(Ordering::SeqCst) {
                    return Err("the witness is stopping".into());
                }
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk) {
                    Ok(0) => return Err("the partner closed the connection".into()),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
    }
}

fn serve(mut stream: TcpStream, shared: &Shared, stop: &AtomicBool) -> std::result::Result<(), String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut acceptor = Acceptor::new(&shared.config.key, handshake::random_nonce());
    let started = Instant::now();
    let (version, db_id) = loop {
        if started.elapsed() > shared.config.partner_timeout {
            return Err("no authentication within the partner timeout".into());
        }
        let (header, body) = next_frame(&mut stream, &mut buf, stop)?;
        match acceptor.on_frame(&header, &body) {
            Ok(AcceptorStep::Send(bytes)) => stream.write_all(&bytes).map_err(|e| e.to_string())?,
            Ok(AcceptorStep::Authenticated(hello)) => break (hello.version, hello.db_id),
            Ok(AcceptorStep::Refuse { frame, error }) => {
                let _ = stream.write_all(&frame);
                return Err(error.to_string());
            }
            Err(e) => {
                let _ = stream.write_all(&handshake::encode_refuse(header.version, header.db_id, &e.to_string()));
                return Err(e.to_string());
            }
        }
    };
    let info = ReadyInfo { lsn_hardened: Lsn::ZERO, epoch: Epoch(0), segment_size: 0, tail: Default::default() };
    stream.write_all(&handshake::encode_ready(version, db_id, Epoch(0), &info)).map_err(|e| e.to_string())?;
    loop {
        let (header, body) = next_frame(&mut stream, &mut buf, stop)?;
        if header.kind != FrameKind::WitnessReport {
            return Err(format!("unexpected {:?} frame", header.kind));
        }
        let body = report::decode_report(header.epoch.0, &body)?;
        let key = SessionKey::new(header.db_id.0, &body.own_endpoint, &body.partner_endpoint);
        let answer = {
            let mut witness = shared.witness.lock().map_err(|_| "witness state poisoned".to_string())?;
            let (answer, changed) = witness.on_numbered_report(
                &key,
                &body.own_endpoint,
                &body.report,
                header.lsn_to.0,
                Instant::now(),
                shared.config.partner_timeout,
            );
            witness.note_client_addr(&key, body.report.role, body.report.role_sequence, &body.client_addr);
            if changed {
                // Durable before the answer leaves: a grant or an exposure must survive a crash.
                let all: Vec<_> = witness.grants().map(|(k, g)| (k.clone(), g.clone())).collect();
                store(&shared.file, &all).map_err(|e| format!("cannot persist the witness state: {e}"))?;
            }
            answer
        };
        let reply = frame::encode_frame(
            version,
            FrameKind::WitnessAnswer,
            header.db_id,
            Epoch(answer.role_sequence),
            header.lsn_to,
            header.lsn_to,
            &report::encode_answer(&answer),
            false,
        );
        stream.write_all(&reply).map_err(|e| e.to_string())?;
    }
}

/// `witness.state`: one line per session, then `crc32c <hex>` over everything before it.
fn store(path: &Path, sessions: &[(SessionKey, Grants)]) -> Result<()> {
    let mut text = String::new();
    for (k, g) in sessions {
        let granted: Vec<String> = g.granted.iter().map(|(rs, to)| format!("{rs}={to}")).collect();
        text.push_str(&format!(
            "session {} {} {} {} {} {}\n",
            k.db_id,
            k.endpoints.0,
            k.endpoints.1,
            g.role_sequence,
            g.exposed_at.map(|e| format!("{e}@{}", g.exposed_report)).unwrap_or_else(|| "-".into()),
            if granted.is_empty() { "-".to_string() } else { granted.join(",") }
        ));
    }
    text.push_str(&format!("crc32c {:08x}\n", crc32c::crc32c(text.as_bytes())));
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).context(|| format!("create {}", tmp.display()))?;
        f.write_all(text.as_bytes()).context(|| format!("write {}", tmp.display()))?;
        f.sync_all().context(|| format!("fsync {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).context(|| format!("rename {}", tmp.display()))?;
    if let Some(dir) = path.parent() {
        crate::io::file::sync_dir(dir)?;
    }
    Ok(())
}

fn load(path: &Path) -> Result<Vec<(SessionKey, Grants)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
    };
    let bad = |d: &str| Error::Config(format!("{}: {d}", path.display()));
    let at = text.rfind("crc32c ").ok_or_else(|| bad("no checksum line (damaged file)"))?;
    let (body, crc) = text.split_at(at);
    let crc =
        u32::from_str_radix(crc.trim_start_matches("crc32c ").trim(), 16).map_err(|_| bad("unreadable checksum"))?;
    if crc != crc32c::crc32c(body.as_bytes()) {
        return Err(bad("checksum mismatch (damaged file)"));
    }
    let mut out = Vec::new();
    for line in body.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() != 7 || f[0] != "session" {
            return Err(bad(&format!("not a session line: {line:?}")));
        }
        let num = |s: &str| s.parse::<u64>().map_err(|_| bad(&format!("not a number: {s:?}")));
        let granted = if f[6] == "-" {
            Vec::new()
        } else {
            f[6].split(',')
                .map(|g| {
                    g.split_once('=')
                        .ok_or_else(|| bad("bad grant"))
                        .and_then(|(rs, to)| Ok((num(rs)?, to.to_string())))
                })
                .collect::<Result<Vec<_>>>()?
        };
        let (exposed_at, exposed_report) = match f[5].split_once('@') {
            Some((rs, n)) => (Some(num(rs)?), num(n)?),
            None if f[5] == "-" => (None, 0),
            None => (Some(num(f[5])?), 0),
        };
        let grants = Grants { role_sequence: num(f[4])?, exposed_at, exposed_report, granted };
        out.push((SessionKey::new(num(f[1])?, f[2], f[3]), grants));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_round_trips_and_damage_is_detected() {
        let dir = tempfile::tempdir_in(".").unwrap();
        let path = dir.path().join("witness.state");
        let sessions = vec![(
            SessionKey::new(1, "127.0.0.1:5022", "127.0.0.1:5023"),
            Grants {
                role_sequence: 3,
                exposed_at: Some(2),
                exposed_report: 77,
                granted: vec![(3, "127.0.0.1:5023".into())],
            },
        )];
        store(&path, &sessions).unwrap();
        assert_eq!(load(&path).unwrap(), sessions);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("session 1", "session 2")).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("checksum"));
    }
}

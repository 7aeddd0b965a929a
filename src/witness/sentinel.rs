//! The witness answers Redis Sentinel's discovery commands, so Sentinel-aware Redis clients find
//! the current principal without changes (`SENTINEL get-master-addr-by-name db0`, as
//! redis-py's `Sentinel(...).master_for("db0")` asks). Database `N` of a session is the
//! Sentinel "master" named `dbN`; its mirror is the one "replica". The witness is the only
//! "sentinel" (Sentinel's quorum is the witness's grant rules here).
//!
//! Plain threads and blocking sockets: not on the data path.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{IoContext, Result};
use crate::server::resp::{self, ParseError, Protocol, Reply};
use crate::witness::state::{SentinelView, Witness};

/// Serves Sentinel commands on `addr` until `stop`; returns the bound address.
pub fn start(addr: SocketAddr, witness: Arc<Mutex<Witness>>, stop: Arc<AtomicBool>) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).context(|| format!("bind {addr} (sentinel)"))?;
    listener.set_nonblocking(true).context(|| "sentinel listener non-blocking".into())?;
    let bound = listener.local_addr().context(|| "sentinel address".into())?;
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let (witness, stop) = (witness.clone(), stop.clone());
                    std::thread::spawn(move || serve(stream, &witness, &stop));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    Ok(bound)
}

fn serve(mut stream: TcpStream, witness: &Mutex<Witness>, stop: &AtomicBool) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut input = Vec::new();
    let mut protocol = Protocol::Resp2;
    while !stop.load(Ordering::SeqCst) {
        match resp::parse_command(&input) {
            Ok((command, used)) => {
                let args: Vec<String> =
                    command.args.iter().map(|r| String::from_utf8_lossy(&input[r.clone()]).into_owned()).collect();
                input.drain(..used);
                if args.is_empty() {
                    continue;
                }
                let views = witness.lock().map(|w| w.sentinel_views()).unwrap_or_default();
                let (reply, close) = answer(&args, &views);
                if args[0].eq_ignore_ascii_case("HELLO") && args.get(1).map(String::as_str) == Some("3") {
                    protocol = Protocol::Resp3;
                }
                let mut out = Vec::new();
                reply.encode(protocol, &mut out);
                if stream.write_all(&out).is_err() || close {
                    return;
                }
            }
            Err(ParseError::Incomplete) => {
                if input.len() > 1 << 20 {
                    return;
                }
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => input.extend_from_slice(&chunk[..n]),
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(_) => return,
                }
            }
            Err(ParseError::Protocol(text)) => {
                let mut out = Vec::new();
                Reply::Error(format!("ERR {text}")).encode(Protocol::Resp2, &mut out);
                let _ = stream.write_all(&out);
                return;
            }
        }
    }
}

fn host_port(addr: &str) -> (String, String) {
    match addr.parse::<SocketAddr>() {
        Ok(a) => (a.ip().to_string(), a.port().to_string()),
        Err(_) => (addr.to_string(), "0".into()),
    }
}

fn name(view: &SentinelView) -> String {
    format!("db{}", view.db_id.saturating_sub(1))
}

fn bulk(s: impl Into<String>) -> Reply {
    Reply::Bulk(s.into().into_bytes())
}

/// Sentinel's flat `name value …` description of the principal (a "master").
fn master_fields(view: &SentinelView) -> Reply {
    let (ip, port) = host_port(view.principal.as_deref().unwrap_or(""));
    let fields = [
        ("name", name(view)),
        ("ip", ip),
        ("port", port),
        ("runid", String::new()),
        ("flags", "master".to_string()),
        ("role-reported", "master".to_string()),
        ("num-slaves", (view.mirror.is_some() as u8).to_string()),
        ("num-other-sentinels", "0".to_string()),
        ("quorum", "1".to_string()),
        ("config-epoch", view.role_sequence.to_string()),
    ];
    Reply::Map(fields.into_iter().map(|(k, v)| (bulk(k), bulk(v))).collect())
}

fn replica_fields(view: &SentinelView, addr: &str) -> Reply {
    let (ip, port) = host_port(addr);
    let fields = [
        ("name", addr.to_string()),
        ("ip", ip),
        ("port", port),
        ("runid", String::new()),
        ("flags", "slave".to_string()),
        ("role-reported", "slave".to_string()),
        ("master-host", host_port(view.principal.as_deref().unwrap_or("")).0),
        ("master-port", host_port(view.principal.as_deref().unwrap_or("")).1),
    ];
    Reply::Map(fields.into_iter().map(|(k, v)| (bulk(k), bulk(v))).collect())
}

/// One command; the reply and whether to close the connection after it.
fn answer(args: &[String], views: &[SentinelView]) -> (Reply, bool) {
    let lower: Vec<String> = args.iter().map(|a| a.to_ascii_lowercase()).collect();
    let find = |n: &str| views.iter().find(|v| name(v) == n);
    let reply = match lower.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["ping"] => Reply::Simple("PONG".into()),
        // What client libraries send on connecting (redis-py: HELLO, CLIENT SETINFO).
        ["hello", ..] if lower.get(1).is_none_or(|p| p == "2" || p == "3") => {
            let proto = lower.get(1).map(String::as_str).unwrap_or("2");
            Reply::Map(
                [
                    ("server", "redis"),
                    ("version", crate::server::REDIS_COMPAT_VERSION),
                    ("proto", proto),
                    ("mode", "sentinel"),
                    ("role", "sentinel"),
                ]
                .into_iter()
                .map(|(k, v)| (bulk(k), if k == "proto" { Reply::Integer(v.parse().unwrap_or(2)) } else { bulk(v) }))
                .chain([(bulk("modules"), Reply::Array(Vec::new()))])
                .collect(),
            )
        }
        ["hello", ..] => Reply::error("NOPROTO unsupported protocol version"),
        ["client", ..] => Reply::ok(),
        ["quit"] => return (Reply::ok(), true),
        ["sentinel", "get-master-addr-by-name", _] => match find(&args[2]) {
            Some(v) => {
                let (ip, port) = host_port(v.principal.as_deref().unwrap_or(""));
                Reply::Array(vec![bulk(ip), bulk(port)])
            }
            None => Reply::NullArray,
        },
        ["sentinel", "masters"] => Reply::Array(views.iter().map(master_fields).collect()),
        ["sentinel", "master", _] => match find(&args[2]) {
            Some(v) => master_fields(v),
            None => Reply::error("ERR No such master with that name"),
        },
        ["sentinel", "sentinels", _] => Reply::Array(Vec::new()),
        ["sentinel", "replicas" | "slaves", _] => match find(&args[2]) {
            Some(v) => Reply::Array(v.mirror.iter().map(|m| replica_fields(v, m)).collect()),
            None => Reply::error("ERR No such master with that name"),
        },
        [cmd, ..] => Reply::error(format!(
            "ERR unknown command '{cmd}' (this is the mirrorlog witness: SENTINEL discovery commands only)"
        )),
        [] => Reply::error("ERR empty command"),
    };
    (reply, false)
}

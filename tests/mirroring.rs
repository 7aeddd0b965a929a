//! Database mirroring with real processes on loopback: a principal and a mirror, each a
//! `mirrorlog serve`. Every test checks every acknowledged write afterwards, and the page digests
//! of the two copies (`inspect pages`) after both stopped.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::server::{inspect_pages, ServerProcess};
use mirrorlog::client::{Client, Value};

struct Pair {
    dir: tempfile::TempDir,
    key: PathBuf,
    principal: Option<ServerProcess>,
    mirror: Option<ServerProcess>,
    /// Where the principal dials (the mirror's endpoint, or a proxy in front of it).
    partner: SocketAddr,
    principal_args: Vec<String>,
    mirror_args: Vec<String>,
    /// The principal's endpoint to bind on its next start (its partner may dial it there).
    principal_endpoint: Option<SocketAddr>,
}

fn status(server: &ServerProcess, db: usize) -> BTreeMap<String, String> {
    let mut c = server.client();
    if db != 0 {
        c.command(&[b"SELECT", db.to_string().as_bytes()]).unwrap();
    }
    let v = c.command(&[b"MIRROR", b"STATUS"]).unwrap();
    let text = String::from_utf8_lossy(v.as_bytes().expect("MIRROR STATUS is a bulk string")).into_owned();
    text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Pair {
    /// A mirror (RESTORING) and a principal mirroring both databases to it.
    fn start(principal_extra: &[&str], mirror_extra: &[&str]) -> Pair {
        let dir = common::scratch();
        let key = dir.path().join("endpoint.key");
        std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
        let mut pair = Pair {
            key,
            principal: None,
            mirror: None,
            partner: "127.0.0.1:1".parse().unwrap(),
            principal_args: principal_extra.iter().map(|s| s.to_string()).collect(),
            mirror_args: mirror_extra.iter().map(|s| s.to_string()).collect(),
            principal_endpoint: None,
            dir,
        };
        pair.start_mirror(None);
        pair.partner = pair.mirror().endpoint.unwrap();
        pair.start_principal();
        pair
    }

    fn mirror(&self) -> &ServerProcess {
        self.mirror.as_ref().expect("mirror running")
    }

    fn principal(&self) -> &ServerProcess {
        self.principal.as_ref().expect("principal running")
    }

    fn start_mirror(&mut self, endpoint: Option<SocketAddr>) {
        let endpoint = endpoint.map(|e| e.to_string()).unwrap_or_else(|| "127.0.0.1:0".into());
        let key = self.key.to_str().unwrap().to_string();
        let mut args: Vec<&str> = vec!["--restoring", "--endpoint", &endpoint, "--endpoint-key-file", &key];
        args.extend(self.mirror_args.iter().map(String::as_str));
        self.mirror = Some(ServerProcess::start(&self.dir.path().join("mirror"), &args));
    }

    fn start_principal(&mut self) {
        let partner = format!("tcp://{}", self.partner);
        let key = self.key.to_str().unwrap().to_string();
        let endpoint = self.principal_endpoint.map(|e| e.to_string()).unwrap_or_else(|| "127.0.0.1:0".into());
        let mut args: Vec<&str> = vec!["--endpoint", &endpoint, "--endpoint-key-file", &key, "--partner", &partner];
        args.extend(self.principal_args.iter().map(String::as_str));
        let started = ServerProcess::start(&self.dir.path().join("principal"), &args);
        self.principal_endpoint = started.endpoint;
        self.principal = Some(started);
    }

    fn wait_state(&self, db: usize, state: &str) {
        wait_for(&format!("database {db} {state}"), Duration::from_secs(30), || {
            status(self.principal(), db).get("state").map(String::as_str) == Some(state)
        });
    }

    /// Both copies hold the same pages: the mirror redid everything, then both stop cleanly.
    /// A SYNCHRONIZED pair whose principal reaches its mirror through a fault proxy (the
    /// principal is restarted with the proxy's address as its partner).
    fn start_behind_proxy(principal_args: &[&str], mirror_args: &[&str]) -> (Pair, mirrorlog::testing::FaultProxy) {
        let mut pair = Pair::start(principal_args, mirror_args);
        assert!(pair.principal.take().unwrap().stop());
        let proxy = mirrorlog::testing::FaultProxy::start(pair.mirror().endpoint.unwrap()).unwrap();
        pair.partner = proxy.addr();
        pair.start_principal();
        pair.wait_state(0, "SYNCHRONIZED");
        (pair, proxy)
    }

    /// Waits until the process acting as mirror now (either one: roles may have switched) has
    /// hardened and redone everything, stops both, and compares their pages.
    fn stop_and_compare(mut self) {
        let swapped = status(self.principal(), 0)["role"] == "mirror";
        let (acting_principal, acting_mirror) =
            if swapped { (self.mirror(), self.principal()) } else { (self.principal(), self.mirror()) };
        let hardened: u64 = status(acting_principal, 0)["lsn_hardened"].parse().unwrap();
        wait_for("the mirror to harden and redo everything", Duration::from_secs(30), || {
            let m = status(acting_mirror, 0);
            m["lsn_hardened"].parse::<u64>().unwrap() >= hardened && m["lsn_redone"] == m["lsn_hardened"]
        });
        assert!(self.principal.take().unwrap().stop(), "principal stops cleanly");
        assert!(self.mirror.take().unwrap().stop(), "mirror stops cleanly");
        let (pc, principal) = inspect_pages(&self.dir.path().join("principal"));
        let (mc, mirror) = inspect_pages(&self.dir.path().join("mirror"));
        assert_eq!(pc, Some(0), "{principal}");
        assert_eq!(mc, Some(0), "{mirror}");
        assert_eq!(digests(&principal), digests(&mirror), "principal:\n{principal}\nmirror:\n{mirror}");
    }
}

/// `dbN: … N keys; digest X` per database, without the directory names.
fn digests(report: &str) -> Vec<String> {
    report
        .lines()
        .filter_map(|l| l.split_once("pages valid").map(|_| l))
        .filter_map(|l| {
            l.rsplit_once(": ").map(|(head, tail)| (head.rsplit('/').next().unwrap_or("").to_string(), tail))
        })
        .filter_map(|(db, tail)| tail.split_once(" bad; ").map(|(_, keys)| format!("{db} {keys}")))
        .collect()
}

/// Waits until the mirror knows its principal's endpoint (it learns it from pings: forced service
/// needs it) and has hardened everything the principal has.
fn wait_mirror_holds_everything(pair: &Pair) {
    wait_for("the mirror to know its principal's endpoint", Duration::from_secs(10), || {
        !status(pair.mirror(), 0)["partner"].is_empty()
    });
    let hardened: u64 = status(pair.principal(), 0)["lsn_hardened"].parse().unwrap();
    wait_for("the mirror to harden everything", Duration::from_secs(10), || {
        status(pair.mirror(), 0)["lsn_hardened"].parse::<u64>().unwrap() >= hardened
    });
}

fn set(c: &mut Client, key: &str, value: &[u8]) -> bool {
    matches!(c.command(&[b"SET", key.as_bytes(), value]), Ok(Value::Simple(s)) if s == "OK")
}

/// Acknowledged values by (database, key).
type Acked = BTreeMap<(usize, String), Vec<u8>>;

/// Writers on both databases record every acknowledged value; `check` reads them back.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
    count: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let count = Arc::new(AtomicU64::new(0));
        let threads = (0..writers)
            .map(|w| {
                let (stop, acked, count) = (stop.clone(), acked.clone(), count.clone());
                std::thread::spawn(move || {
                    let db = w % 2;
                    let mut n = 0u64;
                    let mut client = None;
                    while !stop.load(Ordering::SeqCst) {
                        let c = match client.as_mut() {
                            Some(c) => c,
                            None => match Client::connect(addr, Duration::from_secs(30))
                                .and_then(|mut c| c.command(&[b"SELECT", db.to_string().as_bytes()]).map(|_| c))
                            {
                                Ok(c) => client.insert(c),
                                Err(_) => {
                                    std::thread::sleep(Duration::from_millis(50));
                                    continue;
                                }
                            },
                        };
                        n += 1;
                        let key = format!("w{w}:{}", n % 300);
                        let size = if n % 50 == 0 { 9000 } else { 40 + (n % 200) as usize };
                        let mut value = format!("{w}-{n}-").into_bytes();
                        value.resize(size, b'x' + (n % 3) as u8);
                        if set(c, &key, &value) {
                            acked.lock().unwrap().insert((db, key), value);
                            count.fetch_add(1, Ordering::SeqCst);
                        } else {
                            client = None;
                        }
                    }
                })
            })
            .collect();
        Load { stop, acked, count, threads }
    }

    fn wait_count(&self, at_least: u64) {
        wait_for(&format!("{at_least} acknowledged writes"), Duration::from_secs(60), || {
            self.count.load(Ordering::SeqCst) >= at_least
        });
    }

    fn finish(self) -> Acked {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

fn check_acked(server: &ServerProcess, acked: &Acked) {
    let mut c = server.client();
    for db in 0..2 {
        c.command(&[b"SELECT", db.to_string().as_bytes()]).unwrap();
        for ((_, key), value) in acked.range((db, String::new())..(db + 1, String::new())) {
            let got = c.command(&[b"GET", key.as_bytes()]).unwrap();
            assert_eq!(got.as_bytes(), Some(&value[..]), "db {db} key {key}: an acknowledged write is missing");
        }
    }
}

#[test]
fn full_safety_random_workload_leaves_identical_copies() {
    // Frequent checkpoints: the principal's incremental checkpoints and their CHECKPOINT records
    // (redo LSNs behind what the mirror has already redone) run all through the workload.
    let pair = Pair::start(
        &["--safety", "full", "--segment-size", "1MiB", "--checkpoint-interval", "0.2"],
        &["--segment-size", "1MiB"],
    );
    pair.wait_state(0, "SYNCHRONIZED");
    pair.wait_state(1, "SYNCHRONIZED");
    let mut c = pair.principal().client();
    let mut state = 7u64;
    let mut model: [BTreeMap<String, Vec<u8>>; 2] = Default::default();
    for i in 0..3000u64 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let db = (state % 2) as usize;
        c.command(&[b"SELECT", db.to_string().as_bytes()]).unwrap();
        let key = format!("k{}", state % 500);
        match (state >> 8) % 6 {
            0 => {
                c.command(&[b"DEL", key.as_bytes()]).unwrap();
                model[db].remove(&key);
            }
            1 => {
                let value = vec![b'a' + (i % 26) as u8; 5000 + (state % 16000) as usize];
                assert!(set(&mut c, &key, &value));
                model[db].insert(key, value);
            }
            2 => {
                let replies = c
                    .pipeline(&[
                        vec![&b"MULTI"[..]],
                        vec![b"SET", key.as_bytes(), b"m1"],
                        vec![b"APPEND", key.as_bytes(), b"-m2"],
                        vec![b"EXEC"],
                    ])
                    .unwrap();
                assert!(matches!(replies[3], Value::Array(_)), "{replies:?}");
                model[db].insert(key, b"m1-m2".to_vec());
            }
            _ => {
                let value = format!("v{i}-{state}").into_bytes();
                assert!(set(&mut c, &key, &value));
                model[db].insert(key, value);
            }
        }
    }
    for (db, keys) in model.iter().enumerate() {
        c.command(&[b"SELECT", db.to_string().as_bytes()]).unwrap();
        for (key, value) in keys {
            assert_eq!(c.command(&[b"GET", key.as_bytes()]).unwrap().as_bytes(), Some(&value[..]));
        }
    }
    // The mirror is a RESTORING copy: it refuses reads and writes.
    let mut m = pair.mirror().client();
    match m.command(&[b"GET", b"k1"]).unwrap() {
        Value::Error(e) => assert!(e.starts_with("READONLY"), "{e}"),
        other => panic!("the mirror served a read: {other:?}"),
    }
    match m.command(&[b"SET", b"k1", b"x"]).unwrap() {
        Value::Error(e) => assert!(e.starts_with("READONLY"), "{e}"),
        other => panic!("the mirror took a write: {other:?}"),
    }
    let p = status(pair.principal(), 0);
    assert_eq!(p["role"], "principal");
    assert_eq!(p["safety"], "FULL");
    assert_eq!(p["exposed"], "0");
    assert!(p["frames_live"].parse::<u64>().unwrap() > 100, "batches go out live: {p:?}");
    // INFO has a mirroring section (published every 100 ms).
    wait_for("INFO mirroring", Duration::from_secs(5), || {
        let info = pair.principal().client().command(&[b"INFO", b"mirroring"]).unwrap();
        let text = String::from_utf8_lossy(info.as_bytes().unwrap()).into_owned();
        text.contains("db0:role=principal,state=SYNCHRONIZED,safety=FULL,exposed=0")
            && text.contains("mirrored_databases:2")
    });
    let m = status(pair.mirror(), 0);
    assert_eq!(m["role"], "mirror");
    assert_eq!(m["database_state"], "RESTORING");
    assert_eq!(m["frames_rejected"], "0");
    assert_eq!(m["redo_failure"], "");
    // The mirror checkpointed where the principal's CHECKPOINT records said.
    wait_for("a mirror checkpoint", Duration::from_secs(10), || {
        status(pair.mirror(), 0)["checkpoint_lsn"].parse::<u64>().unwrap() > 0
    });
    pair.stop_and_compare();
}

#[test]
fn a_killed_mirror_restarts_and_catches_up_without_losing_acknowledged_writes() {
    let mut pair = Pair::start(
        &["--safety", "full", "--partner-timeout", "1", "--segment-size", "1MiB"],
        &["--partner-timeout", "1", "--segment-size", "1MiB"],
    );
    pair.wait_state(0, "SYNCHRONIZED");
    let load = Load::start(pair.principal().addr, 4);
    load.wait_count(500);
    let endpoint = pair.mirror().endpoint;
    pair.mirror.take().unwrap().kill9();
    // FULL holds commits for the partner timeout, then runs exposed: writes go on.
    let before = load.count.load(Ordering::SeqCst);
    load.wait_count(before + 500);
    let p = status(pair.principal(), 0);
    assert_eq!(p["state"], "DISCONNECTED");
    assert_eq!(p["exposed"], "1");
    pair.start_mirror(endpoint);
    pair.wait_state(0, "SYNCHRONIZED");
    pair.wait_state(1, "SYNCHRONIZED");
    let before = load.count.load(Ordering::SeqCst);
    load.wait_count(before + 500);
    let acked = load.finish();
    check_acked(pair.principal(), &acked);
    assert_eq!(status(pair.principal(), 0)["exposed"], "0");
    pair.stop_and_compare();
}

#[test]
fn a_frozen_mirror_holds_full_commits_for_the_partner_timeout_then_the_principal_runs_exposed() {
    let pair = Pair::start(&["--safety", "full", "--partner-timeout", "2"], &["--partner-timeout", "5"]);
    pair.wait_state(0, "SYNCHRONIZED");
    let mut c = pair.principal().client();
    assert!(set(&mut c, "before", b"1"));
    let pid = pair.mirror().child.id() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let started = Instant::now();
    assert!(set(&mut c, "while-frozen", b"2"));
    let held = started.elapsed();
    assert!(held >= Duration::from_millis(1500), "the commit was answered after {held:?}, before the partner timeout");
    let p = status(pair.principal(), 0);
    assert_eq!(p["exposed"], "1", "{p:?}");
    assert_ne!(p["state"], "SYNCHRONIZED");
    // Exposed: further commits do not wait.
    let started = Instant::now();
    assert!(set(&mut c, "exposed", b"3"));
    assert!(started.elapsed() < Duration::from_millis(1500));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    pair.wait_state(0, "SYNCHRONIZED");
    assert_eq!(status(pair.principal(), 0)["exposed"], "0");
    assert!(set(&mut c, "after", b"4"));
    pair.stop_and_compare();
}

/// In SAFETY FULL a read never returns a write its mirror has not hardened, and it waits only
/// for the pages it reads: with the mirror frozen, a GET of the key being written waits with the
/// write, while a GET of a key on another leaf answers at once.
#[test]
fn a_read_waits_for_an_unreleased_write_of_its_page_and_only_for_that() {
    let pair = Pair::start(&["--safety", "full", "--partner-timeout", "4"], &["--partner-timeout", "6"]);
    pair.wait_state(0, "SYNCHRONIZED");
    let mut c = pair.principal().client();
    // Enough keys for several leaves: "k0000" and "k0399" are on different ones.
    let old = vec![b'o'; 100];
    for i in 0..400 {
        assert!(set(&mut c, &format!("k{i:04}"), &old));
    }
    wait_mirror_holds_everything(&pair);
    let pid = pair.mirror().child.id() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let addr = pair.principal().addr;
    let writer = std::thread::spawn(move || {
        let mut w = Client::connect(addr, Duration::from_secs(20)).unwrap();
        let started = Instant::now();
        assert!(set(&mut w, "k0000", b"new"));
        started.elapsed()
    });
    std::thread::sleep(Duration::from_millis(300)); // the SET is appended and held
    let started = Instant::now();
    let other = c.command(&[b"GET", b"k0399"]).unwrap();
    let other_took = started.elapsed();
    assert_eq!(other.as_bytes(), Some(&old[..]));
    assert!(other_took < Duration::from_millis(2000), "a GET of another leaf waited {other_took:?}");
    let same = c.command(&[b"GET", b"k0000"]).unwrap();
    let same_took = started.elapsed();
    assert_eq!(same.as_bytes(), Some(&b"new"[..]), "the GET returns the write once it is released");
    let write_took = writer.join().unwrap();
    assert!(write_took >= Duration::from_millis(3000), "the write was answered after {write_took:?}");
    assert!(
        same_took + Duration::from_millis(300) >= Duration::from_millis(3000),
        "a GET of the held key answered after {same_took:?}, before its write was released"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    pair.wait_state(0, "SYNCHRONIZED");
    pair.stop_and_compare();
}

#[test]
fn safety_off_with_lz4_suspend_persists_and_resume_resynchronizes() {
    let mut pair = Pair::start(&["--safety", "off", "--log-compression", "lz4"], &[]);
    pair.wait_state(0, "SYNCHRONIZED");
    let p = status(pair.principal(), 0);
    assert_eq!(p["safety"], "OFF");
    let mut c = pair.principal().client();
    for i in 0..200 {
        assert!(set(&mut c, &format!("k{i}"), &vec![b'z'; 3000]));
    }
    let sent: u64 = status(pair.principal(), 0)["bytes_sent"].parse().unwrap();
    let hardened: u64 = status(pair.principal(), 0)["lsn_hardened"].parse().unwrap();
    assert!(sent < hardened / 2, "LZ4 frames are smaller than the log ({sent} sent for {hardened})");
    assert_eq!(c.command(&[b"MIRROR", b"SUSPEND"]).unwrap(), Value::Simple("OK".into()));
    assert_eq!(status(pair.principal(), 0)["state"], "SUSPENDED");
    for i in 0..100 {
        assert!(set(&mut c, &format!("s{i}"), b"while suspended"));
    }
    // The suspension survives a restart of the principal.
    drop(c);
    assert!(pair.principal.take().unwrap().stop());
    pair.start_principal();
    std::thread::sleep(Duration::from_millis(500));
    let p = status(pair.principal(), 0);
    assert_eq!(p["state"], "SUSPENDED", "{p:?}");
    assert!(p["suspended_reason"].contains("MIRROR SUSPEND"), "{p:?}");
    let mut c = pair.principal().client();
    assert_eq!(c.command(&[b"MIRROR", b"RESUME"]).unwrap(), Value::Simple("OK".into()));
    pair.wait_state(0, "SYNCHRONIZED");
    // Safety changes at runtime, and persists.
    assert_eq!(c.command(&[b"MIRROR", b"SET", b"SAFETY", b"FULL"]).unwrap(), Value::Simple("OK".into()));
    assert_eq!(status(pair.principal(), 0)["safety"], "FULL");
    assert!(matches!(c.command(&[b"MIRROR", b"SET", b"SAFETY", b"MAYBE"]).unwrap(), Value::Error(_)));
    assert!(set(&mut c, "full-now", b"1"));
    pair.stop_and_compare();
}

/// Bytes a bad peer sends; the endpoint must answer with a REFUSE or close, and stay up.
fn expect_refused(endpoint: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(endpoint).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn the_endpoint_refuses_garbage_wrong_keys_and_unknown_versions_and_stays_up() {
    use mirrorlog::wal::{DbId, Epoch, Lsn};
    use mirrorlog::wire::frame::{self, Parsed};
    use mirrorlog::wire::handshake::{Dialer, DialerStep, VersionRange};
    let pair = Pair::start(&["--safety", "full"], &[]);
    pair.wait_state(0, "SYNCHRONIZED");
    let endpoint = pair.mirror().endpoint.unwrap();
    expect_refused(endpoint, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_refused(endpoint, &[0u8; 200]);
    // A well-formed HELLO whose every bit is flipped once somewhere: refused.
    let (_, hello) = Dialer::start(b"0123456789abcdef0123456789abcdef", DbId(1), Epoch(1), 4 << 20, false, [7; 32]);
    let mut flipped = hello.clone();
    flipped[70] ^= 0x10;
    expect_refused(endpoint, &flipped);
    // The handshake driven by hand: a wrong key, and a version nobody speaks.
    let handshake = |key: &[u8], versions: Option<VersionRange>| -> Result<u16, String> {
        let (mut dialer, hello) = match versions {
            None => Dialer::start(key, DbId(1), Epoch(1), 4 << 20, false, [9; 32]),
            Some(v) => Dialer::start_with_versions(key, DbId(1), Epoch(1), 4 << 20, false, [9; 32], v),
        };
        let mut s = TcpStream::connect(endpoint).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&hello).unwrap();
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed".into());
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Ok(Parsed::Frame { header, total_len }) = frame::parse(&buf) {
                let body = frame::body_bytes(&header, &buf[..total_len]).unwrap().into_owned();
                buf.drain(..total_len);
                match dialer.on_frame(&header, &body).map_err(|e| e.to_string())? {
                    DialerStep::Send(proof) => s.write_all(&proof).unwrap(),
                    DialerStep::Ready { version, .. } => return Ok(version),
                }
            }
        }
    };
    let wrong = handshake(b"not the key, but long enough", None).unwrap_err();
    assert!(wrong.to_lowercase().contains("key"), "{wrong}");
    let versions = handshake(b"0123456789abcdef0123456789abcdef", Some(VersionRange { min: 1, max: 1 }));
    assert_eq!(versions, Ok(1), "a peer of the previous version negotiates it");
    // A peer that speaks only a future version 9: a HELLO made by hand.
    let mut body = Vec::new();
    body.extend_from_slice(&9u16.to_le_bytes());
    body.extend_from_slice(&9u16.to_le_bytes());
    body.extend_from_slice(&(4u64 << 20).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&[5u8; 32]);
    let future = frame::encode_frame(1, frame::FrameKind::Hello, DbId(1), Epoch(1), Lsn(0), Lsn(0), &body, false);
    let answer = expect_refused(endpoint, &future);
    assert!(answer.contains("versions 1 to 3") && answer.contains('9'), "the refusal names the versions: {answer:?}");
    // Everything still works: the mirror answers PING and the session is synchronized.
    assert_eq!(pair.mirror().client().command(&[b"PING"]).unwrap(), Value::Simple("PONG".into()));
    let mut c = pair.principal().client();
    assert!(set(&mut c, "still", b"mirrored"));
    pair.wait_state(0, "SYNCHRONIZED");
    pair.stop_and_compare();
}

/// A TCP proxy on loopback that flips one bit of the principal-to-mirror stream once, after
/// `flip_after` bytes.
fn bit_flipping_proxy(target: SocketAddr, flip_after: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let flipped = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(target) else { continue };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let flipped = flipped.clone();
            std::thread::spawn(move || {
                let mut client = client;
                let mut server = server;
                let mut seen = 0usize;
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = client.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if !flipped.load(Ordering::SeqCst) && seen + n > flip_after {
                        let at = flip_after.saturating_sub(seen).min(n - 1);
                        buf[at] ^= 0x04;
                        flipped.store(true, Ordering::SeqCst);
                    }
                    seen += n;
                    if server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = server.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

#[test]
fn a_flipped_bit_on_the_wire_is_rejected_and_the_session_recovers() {
    let dir_pair = Pair::start(&["--safety", "full"], &[]);
    // Rebuild the principal behind a proxy that flips a bit 200 KB into the stream.
    let mut pair = dir_pair;
    assert!(pair.principal.take().unwrap().stop());
    let proxy = bit_flipping_proxy(pair.mirror().endpoint.unwrap(), 200_000);
    pair.partner = proxy;
    pair.start_principal();
    pair.wait_state(0, "SYNCHRONIZED");
    let mut c = pair.principal().client();
    let mut acked = BTreeMap::new();
    for i in 0..400 {
        let key = format!("k{i}");
        let value = vec![b'a' + (i % 26) as u8; 2000];
        assert!(set(&mut c, &key, &value));
        acked.insert((0usize, key), value);
    }
    wait_for("the mirror to reject the damaged frame", Duration::from_secs(30), || {
        status(pair.mirror(), 0)["frames_rejected"] != "0"
    });
    pair.wait_state(0, "SYNCHRONIZED");
    check_acked(pair.principal(), &acked);
    pair.stop_and_compare();
}

#[test]
fn the_retention_limit_suspends_the_session_instead_of_filling_the_disk() {
    let mut pair = Pair::start(
        &["--safety", "off", "--segment-size", "1MiB", "--max-log-retention", "3MiB", "--checkpoint-interval", "0.2"],
        &["--segment-size", "1MiB"],
    );
    pair.wait_state(0, "SYNCHRONIZED");
    pair.mirror.take().unwrap().kill9();
    let mut c = pair.principal().client();
    let value = vec![b'r'; 8000];
    wait_for("the retention limit", Duration::from_secs(60), || {
        for i in 0..50 {
            assert!(set(&mut c, &format!("r{i}"), &value));
        }
        status(pair.principal(), 0)["state"] == "SUSPENDED"
    });
    let p = status(pair.principal(), 0);
    assert!(p["suspended_reason"].contains("max-log-retention"), "{p:?}");
    // The log is released again: it stays bounded while writes go on.
    for i in 0..600 {
        assert!(set(&mut c, &format!("after{i}"), &value));
    }
    std::thread::sleep(Duration::from_millis(600));
    let retained: u64 = status(pair.principal(), 0)["log_retained_bytes"].parse().unwrap();
    assert!(retained < 4 << 20, "log kept after the suspension: {retained} bytes");
    // And the suspension is persisted.
    assert!(pair.principal.take().unwrap().stop());
    pair.start_principal();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(pair.principal(), 0)["state"], "SUSPENDED");
}

#[test]
fn a_killed_principal_restarts_and_ships_what_the_mirror_lacks() {
    let mut pair = Pair::start(&["--safety", "off", "--segment-size", "1MiB"], &["--segment-size", "1MiB"]);
    pair.wait_state(0, "SYNCHRONIZED");
    let load = Load::start(pair.principal().addr, 4);
    load.wait_count(1500);
    let acked = load.finish();
    pair.principal.take().unwrap().kill9();
    pair.start_principal();
    pair.wait_state(0, "SYNCHRONIZED");
    pair.wait_state(1, "SYNCHRONIZED");
    check_acked(pair.principal(), &acked);
    pair.stop_and_compare();
}

#[test]
fn mirroring_needs_a_key_and_a_restoring_mirror() {
    let dir = common::scratch();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(["serve", "--partner", "tcp://127.0.0.1:5999", "--data"])
        .arg(dir.path().join("p"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--endpoint-key-file"));
    // Two principals: the second refuses to be a mirror of the first.
    let key = dir.path().join("key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").unwrap();
    let k = key.to_str().unwrap();
    let a = ServerProcess::start(&dir.path().join("a"), &["--endpoint", "127.0.0.1:0", "--endpoint-key-file", k]);
    let partner = format!("tcp://{}", a.endpoint.unwrap());
    let b = ServerProcess::start(
        &dir.path().join("b"),
        &["--endpoint", "127.0.0.1:0", "--endpoint-key-file", k, "--partner", &partner],
    );
    std::thread::sleep(Duration::from_millis(800));
    let s = status(&b, 0);
    assert_ne!(s["state"], "SYNCHRONIZED", "a database that is not RESTORING never becomes a mirror: {s:?}");
    assert_eq!(status(&a, 0)["role"], "none");
    let mut c = a.client();
    assert_eq!(c.command(&[b"SET", b"mine", b"1"]).unwrap(), Value::Simple("OK".into()));
    // MIRROR SET PARTNER at runtime, and MIRROR OFF.
    let mut cb = b.client();
    assert!(matches!(cb.command(&[b"MIRROR", b"SET", b"PARTNER", partner.as_bytes()]).unwrap(), Value::Error(_)));
    assert_eq!(cb.command(&[b"MIRROR", b"OFF"]).unwrap(), Value::Simple("OK".into()));
    assert_eq!(status(&b, 0)["role"], "none");
    assert!(matches!(cb.command(&[b"MIRROR", b"BOGUS"]).unwrap(), Value::Error(_)));
    assert!(a.stop());
    assert!(b.stop());
    let _ = Path::new("unused");
}

fn ctl(server: &ServerProcess, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(["ctl", "--server", &server.addr.to_string()])
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn ctl_sets_up_a_session_the_sql_server_way_mirror_first() {
    let dir = common::scratch();
    let key = dir.path().join("key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").unwrap();
    let k = key.to_str().unwrap();
    let mirror = ServerProcess::start(
        &dir.path().join("m"),
        &["--restoring", "--endpoint", "127.0.0.1:0", "--endpoint-key-file", k],
    );
    let principal =
        ServerProcess::start(&dir.path().join("p"), &["--endpoint", "127.0.0.1:0", "--endpoint-key-file", k]);
    let mut c = principal.client();
    assert_eq!(c.command(&[b"SET", b"before", b"mirroring"]).unwrap(), Value::Simple("OK".into()));
    // First on the mirror (it names the principal), then on the principal (it starts the session).
    let p_endpoint = format!("tcp://{}", principal.endpoint.unwrap());
    let m_endpoint = format!("tcp://{}", mirror.endpoint.unwrap());
    assert_eq!(ctl(&mirror, &["set-partner", "0", &p_endpoint]), (true, "OK\n".into()));
    assert_eq!(ctl(&principal, &["set-partner", "0", &m_endpoint]), (true, "OK\n".into()));
    wait_for("SYNCHRONIZED", Duration::from_secs(20), || status(&principal, 0)["state"] == "SYNCHRONIZED");
    let (ok, text) = ctl(&principal, &["status", "0"]);
    assert!(ok && text.contains("role:principal") && text.contains("state:SYNCHRONIZED"), "{text}");
    let (ok, text) = ctl(&mirror, &["status", "0"]);
    assert!(ok && text.contains("role:mirror") && text.contains(&format!("partner:{p_endpoint}")), "{text}");
    assert_eq!(ctl(&principal, &["set-safety", "0", "off"]), (true, "OK\n".into()));
    assert_eq!(status(&principal, 0)["safety"], "OFF");
    let (ok, text) = ctl(&mirror, &["set-safety", "0", "full"]);
    assert!(!ok && text.contains("principal"), "set on the principal: {text}");
    assert_eq!(ctl(&principal, &["suspend", "0"]), (true, "OK\n".into()));
    assert_eq!(status(&principal, 0)["state"], "SUSPENDED");
    assert_eq!(ctl(&principal, &["resume", "0"]), (true, "OK\n".into()));
    wait_for("SYNCHRONIZED again", Duration::from_secs(20), || status(&principal, 0)["state"] == "SYNCHRONIZED");
    // A witness, set on both partners with ctl; it needs SAFETY FULL, and says so.
    let witness = WitnessProcess::start(&dir.path().join("w"), &key, "10");
    let w = format!("tcp://{}", witness.addr);
    let (ok, text) = ctl(&principal, &["set-witness", "0", &w]);
    assert!(!ok && text.contains("a witness needs SAFETY FULL"), "{text}");
    assert_eq!(ctl(&principal, &["set-safety", "0", "full"]), (true, "OK\n".into()));
    assert_eq!(ctl(&mirror, &["set-witness", "0", &w]), (true, "OK\n".into()));
    assert_eq!(ctl(&principal, &["set-witness", "0", &w]), (true, "OK\n".into()));
    wait_for("both partners on the witness", Duration::from_secs(20), || {
        let (p, m) = (status(&principal, 0), status(&mirror, 0));
        p["witness"] == w && p["witness_lease"] == "1" && m["witness"] == w && m["witness_connected"] == "1"
    });
    assert_eq!(status(&principal, 0)["quorum"], "1");
    assert_eq!(c.command(&[b"SET", b"after", b"mirroring"]).unwrap(), Value::Simple("OK".into()));
    let hardened: u64 = status(&principal, 0)["lsn_hardened"].parse().unwrap();
    wait_for("the mirror to redo everything", Duration::from_secs(20), || {
        let m = status(&mirror, 0);
        m["lsn_redone"].parse::<u64>().unwrap() >= hardened
    });
    assert_eq!(ctl(&principal, &["remove", "0"]), (true, "OK\n".into()));
    assert_eq!(status(&principal, 0)["role"], "none");
    assert!(principal.stop());
    assert!(mirror.stop());
    let (_, p) = inspect_pages(&dir.path().join("p"));
    let (_, m) = inspect_pages(&dir.path().join("m"));
    assert_eq!(digests(&p)[0], digests(&m)[0], "principal:\n{p}\nmirror:\n{m}");
}

#[test]
fn a_principal_whose_log_differs_from_the_mirrors_is_refused_not_extended() {
    let mut pair = Pair::start(&["--safety", "full"], &[]);
    pair.wait_state(0, "SYNCHRONIZED");
    let mut c = pair.principal().client();
    for i in 0..50 {
        assert!(set(&mut c, &format!("old{i}"), &[b'o'; 100]));
    }
    let hardened: u64 = status(pair.principal(), 0)["lsn_hardened"].parse().unwrap();
    wait_for("the mirror to harden everything", Duration::from_secs(20), || {
        status(pair.mirror(), 0)["lsn_hardened"].parse::<u64>().unwrap() >= hardened
    });
    drop(c);
    assert!(pair.principal.take().unwrap().stop());
    // Another history at the same LSNs (as a principal that lost its log tail would write), and
    // longer than the mirror's: only the content can tell.
    std::fs::remove_dir_all(pair.dir.path().join("principal")).unwrap();
    let principal_args = std::mem::take(&mut pair.principal_args);
    pair.principal = Some(ServerProcess::start(&pair.dir.path().join("principal"), &[]));
    let mut c = pair.principal().client();
    for i in 0..200 {
        assert!(set(&mut c, &format!("new{i}"), &[b'n'; 333]));
    }
    drop(c);
    assert!(pair.principal.take().unwrap().stop());
    pair.principal_args = principal_args;
    pair.start_principal();
    wait_for("the session to be suspended", Duration::from_secs(20), || {
        status(pair.principal(), 0)["state"] == "SUSPENDED"
    });
    let p = status(pair.principal(), 0);
    assert!(p["suspended_reason"].contains("differs"), "{p:?}");
    assert_eq!(
        status(pair.mirror(), 0)["lsn_hardened"].parse::<u64>().unwrap(),
        hardened,
        "the mirror was not extended"
    );
}

/// A TCP proxy that forwards the principal-to-mirror stream of its first connection only up to
/// `cut_after` bytes and then holds the rest (the connection stays open, silent); later
/// connections pass everything.
fn stalling_proxy(target: SocketAddr, cut_after: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(target) else { continue };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let limit = if n == 0 { cut_after } else { usize::MAX };
            std::thread::spawn(move || {
                let (mut client, mut server) = (client, server);
                let mut seen = 0usize;
                let mut buf = vec![0u8; 65536];
                while let Ok(got) = client.read(&mut buf) {
                    if got == 0 {
                        break;
                    }
                    let pass = got.min(limit.saturating_sub(seen));
                    seen += got;
                    if pass > 0 && server.write_all(&buf[..pass]).is_err() {
                        break;
                    }
                }
                let _ = server.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

#[test]
fn a_mirror_restarted_inside_a_transaction_completes_it_when_the_rest_arrives() {
    // SAFETY OFF and a long partner timeout: the principal neither waits for the stalled mirror
    // nor gives up on the connection while the test looks.
    let mut pair = Pair::start(
        &["--safety", "off", "--partner-timeout", "30", "--databases", "1"],
        &["--partner-timeout", "30", "--databases", "1"],
    );
    assert!(pair.principal.take().unwrap().stop());
    let endpoint = pair.mirror().endpoint;
    // The mirror gets the first 1.5 MB of the stream: the middle of a 3 MB value's transaction.
    pair.partner = stalling_proxy(endpoint.unwrap(), 1_500_000);
    pair.start_principal();
    pair.wait_state(0, "SYNCHRONIZED");
    let mut c = pair.principal().client();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    assert!(set(&mut c, "big", &big));
    wait_for("the mirror to harden part of the transaction", Duration::from_secs(20), || {
        status(pair.mirror(), 0)["lsn_hardened"].parse::<u64>().unwrap() > 1_000_000
    });
    std::thread::sleep(Duration::from_millis(300));
    let m = status(pair.mirror(), 0);
    assert!(m["lsn_redone"].parse::<u64>().unwrap() < m["lsn_hardened"].parse::<u64>().unwrap(), "{m:?}");
    pair.mirror.take().unwrap().kill9();
    pair.start_mirror(endpoint);
    pair.wait_state(0, "SYNCHRONIZED");
    assert!(set(&mut c, "after", b"1"));
    let m = status(pair.mirror(), 0);
    assert_eq!(m["redo_failure"], "", "{m:?}");
    assert_eq!(c.command(&[b"GET", b"big"]).unwrap().as_bytes(), Some(&big[..]));
    pair.stop_and_compare();
}

/// Writers that follow the principal: each writes to one server until it answers anything but
/// OK (READONLY after a failover, an error, a closed connection), then to the other. Every OK is
/// recorded.
struct FollowingLoad {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    count: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl FollowingLoad {
    fn start(servers: [SocketAddr; 2], writers: usize) -> FollowingLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let count = Arc::new(AtomicU64::new(0));
        let threads = (0..writers)
            .map(|w| {
                let (stop, acked, count) = (stop.clone(), acked.clone(), count.clone());
                std::thread::spawn(move || {
                    let mut at = 0usize;
                    let mut client: Option<Client> = None;
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        if client.is_none() {
                            client = Client::connect(servers[at], Duration::from_secs(30)).ok();
                            if client.is_none() {
                                at = 1 - at;
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                        }
                        n += 1;
                        let key = format!("f{w}:{}", n % 200);
                        let value = format!("{w}-{n}").into_bytes();
                        if set(client.as_mut().unwrap(), &key, &value) {
                            acked.lock().unwrap().insert(key, value);
                            count.fetch_add(1, Ordering::SeqCst);
                        } else {
                            client = None;
                            at = 1 - at;
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                })
            })
            .collect();
        FollowingLoad { stop, acked, count, threads }
    }

    fn finish(self) -> BTreeMap<String, Vec<u8>> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

#[test]
fn manual_failover_back_and_forth_ten_times_under_load_loses_nothing() {
    let pair = Pair::start(&["--safety", "full", "--databases", "1"], &["--databases", "1"]);
    pair.wait_state(0, "SYNCHRONIZED");
    let servers = [pair.principal().addr, pair.mirror().addr];
    let load = FollowingLoad::start(servers, 4);
    let by_addr = |addr: SocketAddr| if addr == servers[0] { pair.principal() } else { pair.mirror() };
    let mut principal = 0usize;
    for round in 0..10 {
        let (p, m) = (by_addr(servers[principal]), by_addr(servers[1 - principal]));
        wait_for(&format!("round {round}: SYNCHRONIZED"), Duration::from_secs(30), || {
            status(p, 0)["state"] == "SYNCHRONIZED"
        });
        let before = load.count.load(Ordering::SeqCst);
        wait_for("writes before the failover", Duration::from_secs(30), || {
            load.count.load(Ordering::SeqCst) > before + 50
        });
        let mut c = p.client();
        assert_eq!(c.command(&[b"MIRROR", b"FAILOVER"]).unwrap(), Value::Simple("OK".into()), "round {round}");
        wait_for(&format!("round {round}: roles swapped"), Duration::from_secs(30), || {
            let s = status(m, 0);
            s["role"] == "principal" && s["state"] == "SYNCHRONIZED" && status(p, 0)["role"] == "mirror"
        });
        let s = status(m, 0);
        assert_eq!(s["role_sequence"], (round + 2).to_string(), "each failover takes the next role sequence");
        principal = 1 - principal;
    }
    let before = load.count.load(Ordering::SeqCst);
    wait_for("writes after the last failover", Duration::from_secs(30), || {
        load.count.load(Ordering::SeqCst) > before + 50
    });
    let acked = load.finish();
    assert!(acked.len() > 100);
    let mut c = by_addr(servers[principal]).client();
    for (key, value) in &acked {
        assert_eq!(
            c.command(&[b"GET", key.as_bytes()]).unwrap().as_bytes(),
            Some(&value[..]),
            "{key} was acknowledged"
        );
    }
    drop(c);
    assert_eq!(principal, 0, "an even number of failovers: the first principal serves again");
    pair.stop_and_compare();
}

#[test]
fn forced_service_serves_from_the_mirror_and_the_returning_old_principal_is_fenced() {
    let mut pair = Pair::start(&["--safety", "full", "--databases", "1"], &["--databases", "1"]);
    pair.wait_state(0, "SYNCHRONIZED");
    let mut c = pair.principal().client();
    let mut acked = BTreeMap::new();
    for i in 0..200 {
        let (key, value) = (format!("k{i}"), format!("v{i}"));
        assert!(set(&mut c, &key, value.as_bytes()));
        acked.insert(key, value);
    }
    drop(c);
    pair.principal.take().unwrap().kill9();
    let mut m = pair.mirror().client();
    // The mirror refuses until told: FORCE_SERVICE makes it serve (role sequence 2).
    assert!(matches!(m.command(&[b"SET", b"x", b"1"]).unwrap(), Value::Error(_)));
    wait_for("the mirror to notice the principal is gone", Duration::from_secs(30), || {
        status(pair.mirror(), 0)["connected"] == "0"
    });
    assert_eq!(m.command(&[b"MIRROR", b"FORCE_SERVICE"]).unwrap(), Value::Simple("OK".into()));
    wait_for("forced service", Duration::from_secs(30), || set(&mut pair.mirror().client(), "after", b"forced"));
    let s = status(pair.mirror(), 0);
    assert_eq!(s["role_sequence"], "2", "{s:?}");
    // Nothing acknowledged by the old principal in SAFETY FULL is lost.
    let mut m = pair.mirror().client();
    for (key, value) in &acked {
        assert_eq!(m.command(&[b"GET", key.as_bytes()]).unwrap().as_bytes(), Some(value.as_bytes()), "{key}");
    }
    // The new principal ends the session (standalone at role sequence 2): the old principal,
    // when it comes back still believing it is principal at role sequence 1, dials it, learns
    // of role sequence 2 and stops serving — with nowhere to rejoin, it stays fenced.
    // (It is standalone already if it never learned the old principal's endpoint.)
    let off = pair.mirror().client().command(&[b"MIRROR", b"OFF"]).unwrap();
    assert!(
        matches!(&off, Value::Simple(s) if s == "OK") || matches!(&off, Value::Error(e) if e.contains("not mirrored")),
        "{off:?}"
    );
    pair.start_principal();
    wait_for("the old principal to be fenced", Duration::from_secs(30), || {
        status(pair.principal(), 0).get("fenced_by").map(String::as_str) == Some("2")
    });
    let mut old = pair.principal().client();
    match old.command(&[b"SET", b"split", b"brain"]).unwrap() {
        Value::Error(e) => assert!(e.contains("fenced"), "{e}"),
        other => panic!("a fenced principal took a write: {other:?}"),
    }
    assert!(matches!(old.command(&[b"GET", b"k1"]).unwrap(), Value::Error(_)), "nor does it serve reads");
    drop(old);
    // The fencing is persisted.
    assert!(pair.principal.take().unwrap().stop());
    pair.start_principal();
    assert_eq!(status(pair.principal(), 0)["fenced_by"], "2");
    assert!(matches!(pair.principal().client().command(&[b"SET", b"again", b"no"]).unwrap(), Value::Error(_)));
}

#[test]
fn a_black_holed_link_holds_full_commits_for_the_partner_timeout_and_heals() {
    use mirrorlog::testing::Fault;
    let (pair, proxy) = Pair::start_behind_proxy(
        &["--safety", "full", "--partner-timeout", "2", "--databases", "1"],
        &["--databases", "1"],
    );
    let mut c = pair.principal().client();
    assert!(set(&mut c, "before", b"1"));
    // A silent network: connections stay open, nothing arrives.
    proxy.set(Fault::BlackHole);
    let started = Instant::now();
    assert!(set(&mut c, "during", b"2"));
    let held = started.elapsed();
    assert!(held >= Duration::from_millis(1500), "answered after {held:?}, before the partner timeout");
    assert_eq!(status(pair.principal(), 0)["exposed"], "1");
    proxy.heal();
    pair.wait_state(0, "SYNCHRONIZED");
    assert!(set(&mut c, "after", b"3"));
    drop(c);
    pair.stop_and_compare();
    drop(proxy);
}

/// A `mirrorlog witness` child process.
struct WitnessProcess {
    child: std::process::Child,
    addr: SocketAddr,
    /// Where it answers Redis Sentinel's discovery commands.
    sentinel: SocketAddr,
}

impl WitnessProcess {
    fn start(dir: &Path, key: &Path, partner_timeout: &str) -> WitnessProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
            .args([
                "witness",
                "--endpoint",
                "127.0.0.1:0",
                "--sentinel",
                "127.0.0.1:0",
                "--partner-timeout",
                partner_timeout,
            ])
            .arg("--data")
            .arg(dir)
            .arg("--endpoint-key-file")
            .arg(key)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let addr = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let sentinel = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
        WitnessProcess { child, addr, sentinel }
    }
}

impl Drop for WitnessProcess {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A principal, a mirror and a witness; the principal reaches the mirror and the witness
/// through fault proxies (the mirror reaches the witness directly).
struct Trio {
    pair: Pair,
    witness: WitnessProcess,
    to_mirror: mirrorlog::testing::FaultProxy,
    to_witness: mirrorlog::testing::FaultProxy,
}

impl Trio {
    fn start(timeout: &str) -> Trio {
        let mut pair = Pair::start(&["--databases", "1"], &["--databases", "1"]);
        assert!(pair.principal.take().unwrap().stop());
        assert!(pair.mirror.take().unwrap().stop());
        let witness = WitnessProcess::start(&pair.dir.path().join("witness"), &pair.key, timeout);
        let to_witness = mirrorlog::testing::FaultProxy::start(witness.addr).unwrap();
        let common = ["--partner-timeout", timeout, "--databases", "1"];
        pair.mirror_args = common.iter().map(|s| s.to_string()).collect();
        pair.mirror_args.extend(["--witness".to_string(), format!("tcp://{}", witness.addr)]);
        pair.start_mirror(None);
        let to_mirror = mirrorlog::testing::FaultProxy::start(pair.mirror().endpoint.unwrap()).unwrap();
        pair.partner = to_mirror.addr();
        pair.principal_args = common.iter().map(|s| s.to_string()).collect();
        pair.principal_args.extend(["--safety".to_string(), "full".to_string()]);
        pair.principal_args.extend(["--witness".to_string(), format!("tcp://{}", to_witness.addr())]);
        pair.start_principal();
        pair.wait_state(0, "SYNCHRONIZED");
        wait_for("the witness connections", Duration::from_secs(20), || {
            status(pair.principal(), 0)["witness_lease"] == "1" && status(pair.mirror(), 0)["witness_connected"] == "1"
        });
        // The principal learns the mirror's own endpoint from its pongs (about a second).
        std::thread::sleep(Duration::from_millis(1200));
        Trio { pair, witness, to_mirror, to_witness }
    }
}

#[test]
fn with_a_witness_a_killed_principal_is_replaced_within_the_partner_timeout() {
    let mut trio = Trio::start("1");
    let load = Load::start(trio.pair.principal().addr, 2);
    load.wait_count(300);
    let acked = load.finish();
    trio.pair.principal.take().unwrap().kill9();
    let killed = Instant::now();
    let mut served = None;
    while killed.elapsed() < Duration::from_secs(10) {
        if let Ok(mut c) = Client::connect(trio.pair.mirror().addr, Duration::from_secs(5)) {
            if set(&mut c, "after-failover", b"1") {
                served = Some(killed.elapsed());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let served = served.expect("the mirror took over");
    eprintln!("automatic failover: the mirror served {served:?} after the principal was killed (partner timeout 1 s)");
    assert!(served <= Duration::from_millis(1500) + Duration::from_millis(700), "took {served:?}");
    let s = status(trio.pair.mirror(), 0);
    assert_eq!((s["role"].as_str(), s["role_sequence"].as_str()), ("principal", "2"), "{s:?}");
    // One database here: every writer's SELECT 1 failed and it wrote to database 0.
    let mut c = trio.pair.mirror().client();
    for ((_, key), value) in &acked {
        assert_eq!(c.command(&[b"GET", key.as_bytes()]).unwrap().as_bytes(), Some(&value[..]), "{key}");
    }
}

#[test]
fn with_a_witness_losing_only_the_mirror_runs_exposed_and_does_not_fail_over() {
    use mirrorlog::testing::Fault;
    let trio = Trio::start("1");
    let mut c = trio.pair.principal().client();
    assert!(set(&mut c, "before", b"1"));
    trio.to_mirror.set(Fault::Cut);
    // Commits go on once the witness recorded the exposure.
    let started = Instant::now();
    assert!(set(&mut c, "during", b"2"));
    assert!(started.elapsed() < Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(2500));
    let p = status(trio.pair.principal(), 0);
    assert_eq!((p["role"].as_str(), p["exposed"].as_str(), p["quorum"].as_str()), ("principal", "1", "1"), "{p:?}");
    let m = status(trio.pair.mirror(), 0);
    assert_eq!(m["role"], "mirror", "the witness still hears the principal: no failover ({m:?})");
    assert!(set(&mut c, "still", b"3"));
    trio.to_mirror.heal();
    trio.pair.wait_state(0, "SYNCHRONIZED");
    drop(c);
    let Trio { pair, .. } = trio;
    pair.stop_and_compare();
}

#[test]
fn with_a_witness_a_principal_cut_from_both_stops_and_the_mirror_takes_over() {
    use mirrorlog::testing::Fault;
    let trio = Trio::start("1");
    let mut c = trio.pair.principal().client();
    let mut acked = Vec::new();
    for i in 0..100 {
        let key = format!("k{i}");
        assert!(set(&mut c, &key, b"v"));
        acked.push(key);
    }
    trio.to_mirror.set(Fault::Cut);
    trio.to_witness.set(Fault::Cut);
    wait_for("the mirror to take over", Duration::from_secs(20), || {
        status(trio.pair.mirror(), 0)["role"] == "principal"
    });
    // The isolated principal refuses: it has no quorum.
    let mut fresh = trio.pair.principal().client();
    match fresh.command(&[b"SET", b"isolated", b"x"]).unwrap() {
        Value::Error(e) => assert!(e.contains("quorum") || e.contains("fenced"), "{e}"),
        other => panic!("an isolated principal took a write: {other:?}"),
    }
    let mut m = trio.pair.mirror().client();
    assert!(set(&mut m, "new", b"principal"));
    for key in &acked {
        assert_eq!(m.command(&[b"GET", key.as_bytes()]).unwrap().as_bytes(), Some(&b"v"[..]), "{key}");
    }
}

#[test]
fn after_an_automatic_failover_the_old_principal_rejoins_as_mirror_and_roles_switch_back() {
    let mut trio = Trio::start("1");
    let load = Load::start(trio.pair.principal().addr, 2);
    load.wait_count(300);
    trio.pair.principal.take().unwrap().kill9(); // under load: its last batches may be unshipped
    let acked = load.finish();
    wait_for("the automatic failover", Duration::from_secs(20), || {
        status(trio.pair.mirror(), 0)["role"] == "principal"
    });
    let mut c = trio.pair.mirror().client();
    for i in 0..50 {
        assert!(set(&mut c, &format!("new{i}"), b"after failover"));
    }
    // The old principal comes back: fenced, it learns where role sequence 2 began, cuts its log
    // there, and rejoins as the mirror of the new principal.
    trio.pair.start_principal();
    wait_for("the old principal to rejoin", Duration::from_secs(30), || {
        let old = status(trio.pair.principal(), 0);
        let new = status(trio.pair.mirror(), 0);
        old["role"] == "mirror" && new["state"] == "SYNCHRONIZED"
    });
    let old = status(trio.pair.principal(), 0);
    assert_eq!(old["role_sequence"], "2", "{old:?}");
    eprintln!("rejoin: discarded {:?}", old["discarded"]);
    // Every write acknowledged by either principal is on the new one.
    for ((_, key), value) in &acked {
        assert_eq!(c.command(&[b"GET", key.as_bytes()]).unwrap().as_bytes(), Some(&value[..]), "{key}");
    }
    // And back: a manual failover makes the first principal serve again.
    assert_eq!(c.command(&[b"MIRROR", b"FAILOVER"]).unwrap(), Value::Simple("OK".into()));
    wait_for("the roles to switch back", Duration::from_secs(30), || {
        status(trio.pair.principal(), 0)["role"] == "principal"
            && status(trio.pair.principal(), 0)["state"] == "SYNCHRONIZED"
    });
    let mut p = trio.pair.principal().client();
    assert_eq!(p.command(&[b"GET", b"new7"]).unwrap().as_bytes(), Some(&b"after failover"[..]));
    assert!(set(&mut p, "back", b"home"));
    drop((c, p));
    let Trio { pair, .. } = trio;
    pair.stop_and_compare();
}

/// The mirror hardens each batch while the principal writes it, so a principal killed meanwhile can
/// come back with less log than its mirror had: its log ends before the failover LSN. (CI saw it
/// once under load: the old principal stayed fenced with "this log ends at lsn 313816, before the
/// failover LSN lsn 314240".) Made here by cutting the killed principal's log back by ten
/// transactions, which it had shipped; no checkpoint has written a page past the cut. It must
/// rejoin from its own end, be shipped the rest, and end with the same data as the new principal.
#[test]
fn an_old_principal_whose_log_ends_before_the_failover_lsn_rejoins_and_catches_up() {
    use mirrorlog::wal::record::record_size;
    let mut trio = Trio::start("1");
    let mut c = trio.pair.principal().client();
    for i in 0..60 {
        assert!(set(&mut c, &format!("k{i}"), format!("v{i}").as_bytes()));
    }
    drop(c);
    wait_mirror_holds_everything(&trio.pair);
    trio.pair.principal.take().unwrap().kill9();
    wait_for("the automatic failover", Duration::from_secs(20), || {
        status(trio.pair.mirror(), 0)["role"] == "principal"
    });
    let log = trio.pair.dir.path().join("principal").join("db0").join("log");
    let mut commit_ends = Vec::new();
    let report = mirrorlog::wal::recovery::scan(&log, None, |h, _| {
        if h.kind == mirrorlog::store::redo::TX_COMMIT {
            commit_ends.push(h.lsn.advance(record_size(h.body_len as usize) as u64));
        }
    })
    .unwrap();
    assert!(commit_ends.len() > 20, "{} commits", commit_ends.len());
    let cut = commit_ends[commit_ends.len() - 11];
    mirrorlog::wal::truncate::truncate_after(&log, cut).unwrap();
    let failover_lsn = report.end_lsn;
    assert!(cut < failover_lsn);
    let mut c = trio.pair.mirror().client();
    for i in 0..20 {
        assert!(set(&mut c, &format!("new{i}"), b"after failover"));
    }
    trio.pair.start_principal();
    wait_for("the old principal to rejoin and catch up", Duration::from_secs(30), || {
        let old = status(trio.pair.principal(), 0);
        let new = status(trio.pair.mirror(), 0);
        old["role"] == "mirror" && new["state"] == "SYNCHRONIZED"
    });
    assert_eq!(status(trio.pair.principal(), 0)["discarded"], "", "nothing was cut");
    for i in 0..60 {
        let v = c.command(&[b"GET", format!("k{i}").as_bytes()]).unwrap();
        assert_eq!(v.as_bytes(), Some(format!("v{i}").as_bytes()), "k{i}");
    }
    drop(c);
    let Trio { pair, .. } = trio;
    pair.stop_and_compare();
}

#[test]
fn after_forced_service_the_old_principal_rejoins_and_reports_what_it_discarded() {
    use mirrorlog::testing::Fault;
    let (pair, proxy) = Pair::start_behind_proxy(
        &["--safety", "off", "--partner-timeout", "1", "--databases", "1"],
        &["--partner-timeout", "1", "--databases", "1"],
    );
    let mut c = pair.principal().client();
    for i in 0..50 {
        assert!(set(&mut c, &format!("shipped{i}"), b"1"));
    }
    wait_mirror_holds_everything(&pair);
    // SAFETY OFF, the mirror cut off: these are acknowledged by the principal alone.
    proxy.set(Fault::BlackHole);
    for i in 0..30 {
        assert!(set(&mut c, &format!("unshipped{i}"), b"2"));
    }
    drop(c);
    // The mirror loses its principal (a partition, not a crash: the principal keeps running
    // and, with SAFETY OFF and no witness, keeps answering) and is forced into service.
    wait_for("the mirror to lose its principal", Duration::from_secs(10), || {
        status(pair.mirror(), 0)["connected"] == "0"
    });
    assert_eq!(pair.mirror().client().command(&[b"MIRROR", b"FORCE_SERVICE"]).unwrap(), Value::Simple("OK".into()));
    wait_for("forced service", Duration::from_secs(10), || status(pair.mirror(), 0)["role"] == "principal");
    // The partition heals: the old principal learns of role sequence 2 and rejoins.
    proxy.heal();
    wait_for("the old principal to rejoin as mirror", Duration::from_secs(30), || {
        status(pair.principal(), 0)["role"] == "mirror" && status(pair.mirror(), 0)["state"] == "SYNCHRONIZED"
    });
    let old = status(pair.principal(), 0);
    assert!(old["discarded"].contains("30 transaction(s)"), "what was lost, and where it is: {old:?}");
    let file = old["discarded"].rsplit(" in ").next().unwrap().to_string();
    assert!(std::fs::metadata(&file).unwrap().len() > 0, "{file}");
    let mut n = pair.mirror().client();
    assert_eq!(n.command(&[b"GET", b"shipped7"]).unwrap().as_bytes(), Some(&b"1"[..]));
    assert_eq!(
        n.command(&[b"GET", b"unshipped7"]).unwrap(),
        Value::Nil,
        "lost with forced service, as SAFETY OFF allows"
    );
    assert!(set(&mut n, "after", b"rejoin"));
    drop(n);
    // The pair works on: the new principal's writes reach the rejoined mirror.
    let hardened: u64 = status(pair.mirror(), 0)["lsn_hardened"].parse().unwrap();
    wait_for("the rejoined mirror to catch up", Duration::from_secs(20), || {
        status(pair.principal(), 0)["lsn_redone"].parse::<u64>().unwrap() >= hardened
    });
    drop(proxy);
}

/// A principal that ran exposed wrote pages (checkpoints) holding transactions its mirror never
/// had; after forced service it rejoins by cutting its log and fetching those pages from the new
/// principal (page rewind), with no reseed, and ends with the same data as the new principal,
/// every page valid.
#[test]
fn a_rejoining_principal_rewinds_pages_it_wrote_past_the_failover_lsn() {
    use mirrorlog::testing::Fault;
    let (pair, proxy) = Pair::start_behind_proxy(
        &["--safety", "off", "--partner-timeout", "1", "--databases", "1", "--checkpoint-interval", "0.1"],
        // No checkpoints on the new principal during the test: its records after forced service
        // are mostly diffs, with LSNs below those of the old principal's pages past the cut, so a
        // page not rewound would stay wrong (redo skips records below a page's LSN).
        &["--partner-timeout", "1", "--databases", "1"],
    );
    let mut c = pair.principal().client();
    let value = |tag: &str, i: usize| format!("{tag}-{i}-").repeat(20).into_bytes();
    for i in 0..400 {
        assert!(set(&mut c, &format!("k{i:04}"), &value("shipped", i)));
    }
    wait_mirror_holds_everything(&pair);
    // Cut off: the principal changes every leaf and checkpoints them to disk.
    proxy.set(Fault::BlackHole);
    let persistence = |pair: &Pair, field: &str| {
        let info = pair.principal().client().command(&[b"INFO", b"persistence"]).unwrap();
        let text = String::from_utf8_lossy(info.as_bytes().unwrap()).into_owned();
        text.lines().find_map(|l| l.strip_prefix(field)).unwrap().trim().parse::<u64>().unwrap()
    };
    // Several rounds, so its pages' LSNs end far past anything the new principal will log.
    for round in 0..6 {
        for i in (0..400).step_by(3) {
            assert!(set(&mut c, &format!("k{i:04}"), &value(&format!("unshipped{round}"), i)));
        }
    }
    for i in 0..100 {
        assert!(set(&mut c, &format!("z{i:04}"), &value("unshipped", i)));
    }
    // A checkpoint that began after the last exposed change wrote every page it changed.
    let end = persistence(&pair, "db0_lsn_appended:");
    wait_for("a checkpoint of the exposed changes", Duration::from_secs(10), || {
        persistence(&pair, "db0_checkpoint_lsn:") >= end
    });
    drop(c);
    wait_for("the mirror to lose its principal", Duration::from_secs(10), || {
        status(pair.mirror(), 0)["connected"] == "0"
    });
    assert_eq!(pair.mirror().client().command(&[b"MIRROR", b"FORCE_SERVICE"]).unwrap(), Value::Simple("OK".into()));
    wait_for("forced service", Duration::from_secs(10), || status(pair.mirror(), 0)["role"] == "principal");
    // The new principal changes some of the same leaves before the old one comes back.
    let mut n = pair.mirror().client();
    for i in (1..400).step_by(5) {
        assert!(set(&mut n, &format!("k{i:04}"), &value("new", i)));
    }
    proxy.heal();
    wait_for("the old principal to rejoin, rewind and synchronize", Duration::from_secs(30), || {
        status(pair.principal(), 0)["role"] == "mirror" && status(pair.mirror(), 0)["state"] == "SYNCHRONIZED"
    });
    let old = status(pair.principal(), 0);
    assert_eq!(old["rewind_pages_left"], "0");
    let rewound: u64 = old["rewound_pages"].parse().unwrap();
    assert!(rewound >= 2, "pages written past the failover LSN were fetched: {old:?}");
    assert!(old["discarded"].contains("transaction(s)"), "{old:?}");
    // More writes after the rejoin reach the rewound mirror.
    for i in (2..400).step_by(7) {
        assert!(set(&mut n, &format!("k{i:04}"), &value("after", i)));
    }
    let mut model = std::collections::BTreeMap::new();
    for i in 0..400 {
        let tag = if i % 7 == 2 {
            "after"
        } else if i % 5 == 1 {
            "new"
        } else {
            "shipped"
        };
        model.insert(format!("k{i:04}"), value(tag, i));
    }
    for (k, v) in &model {
        assert_eq!(n.command(&[b"GET", k.as_bytes()]).unwrap().as_bytes(), Some(&v[..]), "{k}");
    }
    assert_eq!(n.command(&[b"EXISTS", b"z0000"]).unwrap(), Value::Integer(0), "lost with forced service");
    drop(n);
    // The rejoined mirror's pages end up the new principal's: same keys, same digest, all valid.
    pair.stop_and_compare();
    drop(proxy);
}

#[test]
fn the_failover_partner_client_follows_manual_and_automatic_failovers_without_losing_writes() {
    use mirrorlog::client::failover::{FailoverClient, RetrySchedule};
    let mut trio = Trio::start("1");
    let partners = [trio.pair.mirror().addr, trio.pair.principal().addr]; // any order
    let mut client = FailoverClient::new(&partners, 0, RetrySchedule::default());
    let mut acked = Vec::new();
    let mut write = |client: &mut FailoverClient, n: usize| {
        let key = format!("fc{n}");
        match client.command(&[b"SET", key.as_bytes(), b"v"]) {
            Ok(Value::Simple(s)) if s == "OK" => acked.push(key),
            Ok(other) => panic!("{other:?}"),
            Err(_) => {} // outcome unknown (connection lost mid-command): not counted
        }
    };
    for n in 0..100 {
        write(&mut client, n);
    }
    // A manual failover: the client's next commands are refused (READONLY) and it follows.
    let mut p = trio.pair.principal().client();
    assert_eq!(p.command(&[b"MIRROR", b"FAILOVER"]).unwrap(), Value::Simple("OK".into()));
    for n in 100..200 {
        write(&mut client, n);
    }
    assert_eq!(client.principal(), Some(trio.pair.mirror().addr));
    // An automatic failover back: the new principal (the first mirror) is killed.
    wait_for("the old principal to be the mirror, synchronized", Duration::from_secs(20), || {
        status(trio.pair.mirror(), 0)["state"] == "SYNCHRONIZED"
    });
    wait_for("the mirror to know it is synchronized", Duration::from_secs(20), || {
        status(trio.pair.principal(), 0)["principal_was_synchronized"] == "1"
    });
    trio.pair.mirror.take().unwrap().kill9();
    for n in 200..300 {
        write(&mut client, n);
    }
    assert_eq!(client.principal(), Some(trio.pair.principal().addr));
    assert!(client.failovers_followed >= 2, "{}", client.failovers_followed);
    assert!(acked.len() >= 290, "{} of 300 acknowledged", acked.len());
    let mut c = trio.pair.principal().client();
    for key in &acked {
        assert_eq!(c.command(&[b"GET", key.as_bytes()]).unwrap().as_bytes(), Some(&b"v"[..]), "{key}");
    }
}

/// Redis Sentinel's discovery, answered by the witness: Sentinel-aware clients (our client and
/// redis-py's `Sentinel`) find the principal, and find the new one after a failover.
#[test]
fn the_witness_answers_sentinel_discovery_and_redis_py_follows_a_failover() {
    let mut trio = Trio::start("1");
    let sentinel = trio.witness.sentinel;
    let addr_of = |s: &ServerProcess| {
        vec![Value::Bulk(s.addr.ip().to_string().into_bytes()), Value::Bulk(s.addr.port().to_string().into_bytes())]
    };
    let ask = |args: &[&[u8]]| Client::connect(sentinel, Duration::from_secs(5)).unwrap().command(args).unwrap();
    wait_for("the witness to know the principal", Duration::from_secs(10), || {
        ask(&[b"SENTINEL", b"get-master-addr-by-name", b"db0"]) == Value::Array(addr_of(trio.pair.principal()))
    });
    fn text(v: &Value) -> String {
        match v {
            Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(" "),
            other => other.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default(),
        }
    }
    let masters = text(&ask(&[b"SENTINEL", b"masters"]));
    assert!(masters.contains("name db0") && masters.contains("flags master"), "{masters}");
    let replicas = text(&ask(&[b"SENTINEL", b"replicas", b"db0"]));
    assert!(replicas.contains(&format!("port {}", trio.pair.mirror().addr.port())), "{replicas}");
    assert_eq!(ask(&[b"SENTINEL", b"get-master-addr-by-name", b"nosuch"]), Value::Nil);
    // redis-py, unchanged, through Sentinel.
    let script = format!(
        "import redis, redis.sentinel\n\
         s = redis.sentinel.Sentinel([('127.0.0.1', {port})], socket_timeout=5)\n\
         m = s.master_for('db0', socket_timeout=5)\n\
         m.set('through-sentinel', 'yes')\n\
         assert m.get('through-sentinel') == b'yes'\n\
         print(*s.discover_master('db0'))\n",
        port = sentinel.port()
    );
    let run = |script: &str| {
        let out = std::process::Command::new("python3").args(["-c", script]).output().expect("python3");
        assert!(
            out.status.success(),
            "redis-py failed (pip install redis; .ci/run installs it):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let first = run(&script);
    assert_eq!(first, format!("127.0.0.1 {}", trio.pair.principal().addr.port()));
    // The principal dies; the witness grants the mirror the failover, and Sentinel clients are
    // told the new principal.
    wait_for("the mirror to know it is synchronized", Duration::from_secs(20), || {
        status(trio.pair.mirror(), 0)["principal_was_synchronized"] == "1"
    });
    trio.pair.principal.take().unwrap().kill9();
    wait_for("Sentinel to name the new principal", Duration::from_secs(20), || {
        ask(&[b"SENTINEL", b"get-master-addr-by-name", b"db0"]) == Value::Array(addr_of(trio.pair.mirror()))
    });
    let second = run(&script);
    assert_eq!(second, format!("127.0.0.1 {}", trio.pair.mirror().addr.port()));
    assert_eq!(
        trio.pair.mirror().client().command(&[b"GET", b"through-sentinel"]).unwrap().as_bytes(),
        Some(&b"yes"[..])
    );
}

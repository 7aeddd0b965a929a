//! A fault-injecting TCP proxy on loopback, for tests that run the principal, the mirror and the
//! witness as separate processes: each link between two nodes goes through one `FaultProxy`, and
//! the test cuts, delays, black-holes or corrupts it while the processes keep running.
//!
//! Design: plain std threads and blocking sockets (test tooling, not the data path). Per accepted
//! connection, one thread connects to the target and then, per direction, a reader stamps each
//! chunk with its arrival time and a deliverer forwards it when the current fault allows. All
//! state is one mutex and one condvar, so `set` takes effect at once on every connection.
//!
//! Held bytes: under `BlackHole`/`BlackHoleOneWay` and `Delay`, chunks already read are kept in
//! order (up to `CHUNKS_IN_FLIGHT_MAX` per direction, then in the kernel's socket buffers, then by
//! the sender's TCP flow control) and delivered in order when the fault lifts, as a healed network
//! would. A chunk under `Delay(d)` is delivered at its arrival time plus the delay in force when it
//! comes up. `Cut` drops everything in flight along with the connections.
//!
//! Only loopback: the proxy listens on 127.0.0.1 and refuses any target that is not a loopback
//! address, so a test can never send traffic off the machine.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Largest chunk one read takes from a socket.
const CHUNK_SIZE_MAX: usize = 64 * 1024;
/// Chunks read but not yet delivered, per direction of one connection. When full, the reader stops
/// reading and the kernel's buffers, then the sender's flow control, hold the rest.
const CHUNKS_IN_FLIGHT_MAX: usize = 64;
/// Connecting to a loopback target either succeeds or is refused at once; this only bounds the
/// worst case so that `Drop` stays prompt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Which way bytes travel through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the dialing node to the target.
    ToTarget,
    /// From the target back to the dialing node.
    FromTarget,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ToTarget => 0,
            Direction::FromTarget => 1,
        }
    }
}

/// What the proxy does to the link. `set` replaces the previous fault; faults do not stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything; held bytes are delivered in order.
    None,
    /// Shut down every connection (the peers read EOF) and close new ones as soon as they are
    /// accepted, until healed: a partition the peers notice. Bytes in flight are dropped.
    Cut,
    /// Keep connections open but deliver nothing; new connections are accepted but not connected
    /// to the target until healed: a partition the peers do not notice (a frozen host). Held bytes
    /// are delivered in order when the fault lifts.
    BlackHole,
    /// `BlackHole` in one direction only (asymmetric partition); the other direction flows.
    BlackHoleOneWay(Direction),
    /// Deliver every chunk this long after it arrived, in order, in both directions.
    Delay(Duration),
    /// Flip the lowest bit of the middle byte of the next chunk forwarded in this direction, then
    /// behave as `None`. Deterministic, so a failing test replays the same corruption.
    FlipBit(Direction),
}

impl Fault {
    /// A fault from its command word, as `mirrorlog fault-proxy` reads them on standard input:
    /// `heal` (or `none`), `cut`, `blackhole`, `blackhole-to-target`, `blackhole-from-target`,
    /// `delay MS`, `flip-to-target`, `flip-from-target`.
    pub fn parse(text: &str) -> Result<Fault, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            ["heal"] | ["none"] => Ok(Fault::None),
            ["cut"] => Ok(Fault::Cut),
            ["blackhole"] => Ok(Fault::BlackHole),
            ["blackhole-to-target"] => Ok(Fault::BlackHoleOneWay(Direction::ToTarget)),
            ["blackhole-from-target"] => Ok(Fault::BlackHoleOneWay(Direction::FromTarget)),
            ["delay", ms] => ms
                .parse::<u64>()
                .map(|ms| Fault::Delay(Duration::from_millis(ms)))
                .map_err(|_| format!("delay takes milliseconds, not {ms:?}")),
            ["flip-to-target"] => Ok(Fault::FlipBit(Direction::ToTarget)),
            ["flip-from-target"] => Ok(Fault::FlipBit(Direction::FromTarget)),
            _ => Err(format!(
                "unknown fault {text:?}: heal, cut, blackhole, blackhole-to-target, blackhole-from-target, delay MS, flip-to-target, flip-from-target"
            )),
        }
    }
}

struct State {
    /// Never `FlipBit`: that becomes `None` plus a flag in `flip_pending`.
    fault: Fault,
    flip_pending: [bool; 2],
    shutdown: bool,
    /// Both sockets of every live connection, by connection id, so `Cut` and `Drop` can shut
    /// them down.
    sockets: HashMap<u64, Vec<TcpStream>>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    connections_accepted: AtomicU64,
    bytes_forwarded: [AtomicU64; 2],
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a socket of connection `id`; false (and the caller closes it) under `Cut` or
    /// after shutdown, so no socket escapes `close_all`.
    fn register(&self, id: u64, socket: &TcpStream) -> bool {
        let Ok(clone) = socket.try_clone() else { return false };
        let mut state = self.lock();
        if state.shutdown || state.fault == Fault::Cut {
            return false;
        }
        state.sockets.entry(id).or_default().push(clone);
        true
    }

    fn unregister(&self, id: u64) {
        let sockets = self.lock().sockets.remove(&id);
        for socket in sockets.into_iter().flatten() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Shutting a socket down wakes every thread blocked reading or writing it (shutdown(2)).
    fn close_all(state: &mut State) {
        for socket in state.sockets.drain().flat_map(|(_, sockets)| sockets) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Waits while the whole link is black-holed; false when the connection must close instead.
    fn wait_open(&self) -> bool {
        let mut state = self.lock();
        while state.fault == Fault::BlackHole && !state.shutdown {
            state = self.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        !state.shutdown && state.fault != Fault::Cut
    }

    /// Waits until a chunk that arrived at `arrived` may be delivered in `dir`. Returns whether to
    /// flip a bit in it, or `None` when the connection must stop (cut, or the proxy is dropped).
    fn wait_turn(&self, dir: Direction, arrived: Instant) -> Option<bool> {
        let mut state = self.lock();
        loop {
            if state.shutdown || state.fault == Fault::Cut {
                return None;
            }
            let wait = match state.fault {
                Fault::BlackHole => None,
                Fault::BlackHoleOneWay(held) if held == dir => None,
                Fault::Delay(delay) => match arrived.checked_add(delay) {
                    Some(due) => match due.checked_duration_since(Instant::now()) {
                        Some(left) if !left.is_zero() => Some(left),
                        _ => break,
                    },
                    None => None,
                },
                _ => break,
            };
            state = match wait {
                None => self.changed.wait(state).unwrap_or_else(PoisonError::into_inner),
                Some(left) => self.changed.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0,
            };
        }
        Some(std::mem::take(&mut state.flip_pending[dir.index()]))
    }
}

/// A TCP proxy on 127.0.0.1 that forwards to a loopback `target` under a settable `Fault`.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1:0 and forwards each accepted connection to `target`, which must be a
    /// loopback address (`InvalidInput` otherwise).
    pub fn start(target: SocketAddr) -> io::Result<FaultProxy> {
        if !target.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fault proxy: target {target} is not a loopback address; the proxy only talks to loopback"),
            ));
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                fault: Fault::None,
                flip_pending: [false; 2],
                shutdown: false,
                sockets: HashMap::new(),
            }),
            changed: Condvar::new(),
            connections_accepted: AtomicU64::new(0),
            bytes_forwarded: [AtomicU64::new(0), AtomicU64::new(0)],
        });
        let accept_shared = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name("fault-proxy-accept".into())
            .spawn(move || accept_loop(listener, target, accept_shared))?;
        Ok(FaultProxy { addr, shared, accept_thread: Some(accept_thread) })
    }

    /// The address the dialing node connects to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Applies `fault` to existing and new connections at once, replacing the previous fault.
    pub fn set(&self, fault: Fault) {
        let mut state = self.shared.lock();
        state.flip_pending = [false; 2];
        match fault {
            Fault::FlipBit(dir) => {
                state.fault = Fault::None;
                state.flip_pending[dir.index()] = true;
            }
            Fault::Cut => {
                state.fault = Fault::Cut;
                Shared::close_all(&mut state);
            }
            other => state.fault = other,
        }
        drop(state);
        self.shared.changed.notify_all();
    }

    /// `set(Fault::None)`: held bytes are delivered in order; after `Cut`, new connections work.
    pub fn heal(&self) {
        self.set(Fault::None);
    }

    /// Every connection the listener accepted, including those closed at once under `Cut`.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.connections_accepted.load(Ordering::Relaxed)
    }

    /// Bytes delivered in `dir` so far (held bytes count once delivered).
    pub fn bytes_forwarded(&self, dir: Direction) -> u64 {
        self.shared.bytes_forwarded[dir.index()].load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    /// Shuts every socket down, wakes every waiting thread, unblocks `accept` with a connection of
    /// its own, and joins the accept thread, which joins every connection thread.
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.shutdown = true;
            Shared::close_all(&mut state);
        }
        self.shared.changed.notify_all();
        let _ = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT);
        if let Some(accept_thread) = self.accept_thread.take() {
            let _ = accept_thread.join();
        }
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    for id in 0u64.. {
        let accepted = listener.accept();
        if shared.lock().shutdown {
            break;
        }
        let Ok((client, _)) = accepted else {
            thread::sleep(Duration::from_millis(10)); // e.g. EMFILE: do not spin
            continue;
        };
        shared.connections_accepted.fetch_add(1, Ordering::Relaxed);
        if !shared.register(id, &client) {
            continue; // Cut: dropping `client` closes it
        }
        connections.retain(|connection| !connection.is_finished());
        let connection_shared = Arc::clone(&shared);
        let spawned = thread::Builder::new().name(format!("fault-proxy-conn-{id}")).spawn(move || {
            run_connection(id, client, target, &connection_shared);
            connection_shared.unregister(id);
        });
        match spawned {
            Ok(connection) => connections.push(connection),
            Err(_) => shared.unregister(id),
        }
    }
    for connection in connections {
        let _ = connection.join();
    }
}

fn run_connection(id: u64, client: TcpStream, target: SocketAddr, shared: &Shared) {
    if !shared.wait_open() {
        return;
    }
    let Ok(upstream) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else { return };
    if !shared.register(id, &upstream) {
        return;
    }
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    thread::scope(|scope| {
        scope.spawn(|| pump(&client, &upstream, Direction::ToTarget, shared));
        pump(&upstream, &client, Direction::FromTarget, shared);
    });
}

/// Forwards `src` to `dst`: a reader thread stamps each chunk with its arrival time, and this
/// thread delivers it when the fault allows. EOF is passed on as a half-close; an error, a cut or
/// shutdown closes both sockets, which ends the other direction too.
fn pump(src: &TcpStream, dst: &TcpStream, dir: Direction, shared: &Shared) {
    let (chunks_tx, chunks_rx) = sync_channel(CHUNKS_IN_FLIGHT_MAX);
    thread::scope(|scope| {
        scope.spawn(move || read_chunks(src, chunks_tx));
        if deliver(chunks_rx, dst, dir, shared).is_ok() {
            let _ = dst.shutdown(Shutdown::Write);
        } else {
            let _ = src.shutdown(Shutdown::Both);
            let _ = dst.shutdown(Shutdown::Both);
        }
    });
}

fn read_chunks(mut src: &TcpStream, chunks: SyncSender<(Instant, Vec<u8>)>) {
    let mut buffer = vec![0u8; CHUNK_SIZE_MAX];
    loop {
        match src.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => {
                if chunks.send((Instant::now(), buffer[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

/// Ends `Ok` when the reader has seen EOF and every chunk it read has been delivered.
fn deliver(
    chunks: Receiver<(Instant, Vec<u8>)>,
    mut dst: &TcpStream,
    dir: Direction,
    shared: &Shared,
) -> io::Result<()> {
    for (arrived, mut chunk) in chunks {
        let flip = shared.wait_turn(dir, arrived).ok_or_else(|| io::Error::other("fault proxy: cut or stopped"))?;
        if flip {
            let middle = chunk.len() / 2;
            chunk[middle] ^= 1;
        }
        dst.write_all(&chunk)?;
        shared.bytes_forwarded[dir.index()].fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_from_their_command_words() {
        assert_eq!(Fault::parse("heal"), Ok(Fault::None));
        assert_eq!(Fault::parse(" cut "), Ok(Fault::Cut));
        assert_eq!(Fault::parse("blackhole-from-target"), Ok(Fault::BlackHoleOneWay(Direction::FromTarget)));
        assert_eq!(Fault::parse("delay 250"), Ok(Fault::Delay(Duration::from_millis(250))));
        assert_eq!(Fault::parse("flip-to-target"), Ok(Fault::FlipBit(Direction::ToTarget)));
        assert!(Fault::parse("delay soon").is_err());
        assert!(Fault::parse("explode").is_err());
    }
    use std::sync::atomic::AtomicBool;

    /// Echoes every byte back; stops and joins its threads on drop (after the proxy, which closes
    /// the connections to it).
    struct EchoServer {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl EchoServer {
        fn start() -> EchoServer {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let addr = listener.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let stop_seen = Arc::clone(&stop);
            let thread = thread::spawn(move || {
                let mut connections = Vec::new();
                for stream in listener.incoming() {
                    if stop_seen.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    connections.push(thread::spawn(move || {
                        let mut buffer = [0u8; 4096];
                        while let Ok(n @ 1..) = (&stream).read(&mut buffer) {
                            if (&stream).write_all(&buffer[..n]).is_err() {
                                break;
                            }
                        }
                    }));
                }
                connections.into_iter().for_each(|connection| connection.join().unwrap());
            });
            EchoServer { addr, stop, thread: Some(thread) }
        }
    }

    impl Drop for EchoServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(self.addr);
            self.thread.take().unwrap().join().unwrap();
        }
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        stream
    }

    fn round_trip(mut stream: &TcpStream, message: &[u8]) -> Vec<u8> {
        stream.write_all(message).unwrap();
        let mut reply = vec![0u8; message.len()];
        stream.read_exact(&mut reply).unwrap();
        reply
    }

    /// Asserts a read within 300 ms gets nothing.
    fn assert_silent(mut stream: &TcpStream) {
        stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let error = stream.read(&mut [0u8; 64]).expect_err("bytes got through");
        assert!(matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut), "{error}");
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    }

    /// Asserts the connection is closed: a read returns EOF or a reset, not a timeout.
    fn assert_closed(mut stream: &TcpStream) {
        match stream.read(&mut [0u8; 64]) {
            Ok(n) => assert_eq!(n, 0, "read data from a cut connection"),
            Err(e) => assert!(!matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut), "{e}"),
        }
    }

    fn wait_until(condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !condition() {
            assert!(Instant::now() < deadline, "condition not met within 2 s");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn forwards_both_ways() {
        let echo = EchoServer::start();
        let proxy = FaultProxy::start(echo.addr).unwrap();
        let client = connect(proxy.addr());
        assert_eq!(round_trip(&client, b"hello mirror"), b"hello mirror");
        assert_eq!(proxy.connections_accepted(), 1);
        assert_eq!(proxy.bytes_forwarded(Direction::ToTarget), 12);
        wait_until(|| proxy.bytes_forwarded(Direction::FromTarget) == 12);
    }

    #[test]
    fn delay_adds_at_least_the_delay_each_way() {
        let echo = EchoServer::start();
        let proxy = FaultProxy::start(echo.addr).unwrap();
        let client = connect(proxy.addr());
        proxy.set(Fault::Delay(Duration::from_millis(150)));
        let started = Instant::now();
        assert_eq!(round_trip(&client, b"slow"), b"slow");
        assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
        proxy.heal();
        assert_eq!(round_trip(&client, b"fast"), b"fast");
    }

    #[test]
    fn black_hole_holds_bytes_and_heal_delivers_them_in_order() {
        let echo = EchoServer::start();
        let proxy = FaultProxy::start(echo.addr).unwrap();
        let existing = connect(proxy.addr());
        assert_eq!(round_trip(&existing, b"up"), b"up");
        proxy.set(Fault::BlackHole);
        (&existing).write_all(b"first,").unwrap();
        (&existing).write_all(b"second").unwrap();
        let new = connect(proxy.addr());
        (&new).write_all(b"new").unwrap();
        wait_until(|| proxy.connections_accepted() == 2);
        assert_silent(&existing);
        assert_silent(&new);
        proxy.heal();
        let mut held = [0u8; 12];
        (&existing).read_exact(&mut held).unwrap();
        assert_eq!(&held, b"first,second");
        let mut held = [0u8; 3];
        (&new).read_exact(&mut held).unwrap();
        assert_eq!(&held, b"new");
    }

    #[test]
    fn cut_closes_connections_and_refuses_new_ones_until_healed() {
        let echo = EchoServer::start();
        let proxy = FaultProxy::start(echo.addr).unwrap();
        let existing = connect(proxy.addr());
        assert_eq!(round_trip(&existing, b"up"), b"up");
        proxy.set(Fault::Cut);
        assert_closed(&existing);
        if let Ok(refused) = TcpStream::connect(proxy.addr()) {
            refused.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = (&refused).write_all(b"anyone?");
            assert_closed(&refused);
        }
        proxy.heal();
        let after = connect(proxy.addr());
        assert_eq!(round_trip(&after, b"healed"), b"healed");
    }

    #[test]
    fn flip_bit_corrupts_exactly_one_bit_of_the_next_chunk() {
        let echo = EchoServer::start();
        let proxy = FaultProxy::start(echo.addr).unwrap();
        let client = connect(proxy.addr());
        let message: Vec<u8> = (0..32).collect();
        for dir in [Direction::ToTarget, Direction::FromTarget] {
            proxy.set(Fault::FlipBit(dir));
            let reply = round_trip(&client, &message);
            let bits_flipped: u32 = message.iter().zip(&reply).map(|(a, b)| (a ^ b).count_ones()).sum();
            assert_eq!(bits_flipped, 1, "{dir:?}");
            assert_eq!(round_trip(&client, &message), message, "{dir:?}: the chunk after is intact");
        }
    }

    #[test]
    fn one_way_black_hole_lets_the_other_direction_through() {
        let echo = EchoServer::start();
        let proxy = FaultProxy::start(echo.addr).unwrap();
        let client = connect(proxy.addr());
        proxy.set(Fault::BlackHoleOneWay(Direction::FromTarget));
        (&client).write_all(b"ping").unwrap();
        wait_until(|| proxy.bytes_forwarded(Direction::ToTarget) == 4);
        assert_silent(&client);
        proxy.heal();
        let mut reply = [0u8; 4];
        (&client).read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"ping");
    }

    #[test]
    fn drop_closes_connections_promptly() {
        let echo = EchoServer::start();
        let proxy = FaultProxy::start(echo.addr).unwrap();
        let client = connect(proxy.addr());
        proxy.set(Fault::BlackHole);
        (&client).write_all(b"held").unwrap();
        let started = Instant::now();
        drop(proxy);
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert_closed(&client);
    }

    #[test]
    fn refuses_a_target_off_loopback() {
        let error = FaultProxy::start("192.0.2.1:5022".parse().unwrap()).err().unwrap();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(FaultProxy::start("[::1]:5022".parse().unwrap()).is_ok());
    }
}

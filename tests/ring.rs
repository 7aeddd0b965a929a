//! The shard ring's operations, each against the real kernel.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mirrorlog::io::buffer::AlignedBuf;
use mirrorlog::io::file::open_direct;
use mirrorlog::io::net;
use mirrorlog::io::ring::{Completion, CompletionKind, Ring};

thread_local! {
    /// Completions reaped while waiting for another token (each test runs on its own thread).
    static STASH: std::cell::RefCell<Vec<Completion>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn wait_for(ring: &mut Ring, token: u64) -> Completion {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = STASH.with(|stash| {
            let mut stash = stash.borrow_mut();
            ring.reap(&mut stash);
            stash.iter().position(|c| c.token == token).map(|i| stash.remove(i))
        });
        if let Some(c) = found {
            return c;
        }
        assert!(Instant::now() < deadline, "no completion for token {token}");
        ring.submit_and_wait(1).unwrap();
    }
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

#[test]
fn direct_write_fsync_read_fallocate() {
    let dir = scratch();
    let path = dir.path().join("f");
    std::fs::write(&path, []).unwrap();
    let file = open_direct(&path).unwrap();
    let mut ring = Ring::new(16).unwrap();
    ring.fallocate(file.as_raw_fd(), 0, 1 << 20, 1).unwrap();
    assert_eq!(wait_for(&mut ring, 1).result, 0);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);

    let mut buf = AlignedBuf::zeroed(8192);
    buf.iter_mut().enumerate().for_each(|(i, b)| *b = (i % 199) as u8);
    let expected = buf.to_vec();
    ring.write_at(file.as_raw_fd(), buf, 8192, 4096, 0, 2).unwrap();
    let c = wait_for(&mut ring, 2);
    assert_eq!(c.result, 8192);
    assert!(c.buf.is_some(), "the buffer comes back with the completion");
    ring.fsync(file.as_raw_fd(), true, 3).unwrap();
    assert_eq!(wait_for(&mut ring, 3).result, 0);

    ring.read_at(file.as_raw_fd(), AlignedBuf::new(8192), 8192, 4096, 4).unwrap();
    let c = wait_for(&mut ring, 4);
    assert_eq!(c.result, 8192);
    assert_eq!(&c.buf.unwrap()[..], &expected[..]);
}

#[test]
fn data_sync_write_flag_is_accepted() {
    let dir = scratch();
    let path = dir.path().join("f");
    std::fs::write(&path, vec![0u8; 8192]).unwrap();
    let file = open_direct(&path).unwrap();
    let mut ring = Ring::new(8).unwrap();
    ring.write_at(file.as_raw_fd(), AlignedBuf::zeroed(4096), 4096, 0, libc::RWF_DSYNC, 1).unwrap();
    assert_eq!(wait_for(&mut ring, 1).result, 4096);
}

#[test]
fn unaligned_direct_write_fails_with_einval_and_returns_the_buffer() {
    let dir = scratch();
    let path = dir.path().join("f");
    std::fs::write(&path, vec![0u8; 8192]).unwrap();
    let file = open_direct(&path).unwrap();
    let mut ring = Ring::new(8).unwrap();
    ring.write_at(file.as_raw_fd(), AlignedBuf::zeroed(4096), 4096, 100, 0, 1).unwrap();
    let c = wait_for(&mut ring, 1);
    assert_eq!(c.result, -libc::EINVAL);
    assert!(c.buf.is_some());
}

fn connected_pair(ring: &mut Ring) -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    let listener = net::listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr: SocketAddr = net::local_addr(listener.as_raw_fd()).unwrap();
    ring.accept(listener.as_raw_fd(), 10).unwrap();
    let client = net::tcp_socket(addr).unwrap();
    ring.connect(client.as_raw_fd(), addr, 11).unwrap();
    let connected = wait_for(ring, 11);
    assert_eq!(connected.result, 0, "connect");
    let accepted = wait_for(ring, 10);
    assert!(accepted.result >= 0, "accept");
    assert!(accepted.peer.unwrap().ip().is_loopback());
    // SAFETY: the accept result is a new descriptor we now own.
    let server = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(accepted.result) };
    (client, server)
}

#[test]
fn accept_connect_send_recv() {
    let mut ring = Ring::new(16).unwrap();
    let (client, server) = connected_pair(&mut ring);
    let mut buf = AlignedBuf::new(4096);
    buf.set_len(5);
    buf.copy_from_slice(b"hello");
    ring.send(client.as_raw_fd(), buf, 0, 5, 1).unwrap();
    assert_eq!(wait_for(&mut ring, 1).result, 5);
    ring.recv(server.as_raw_fd(), AlignedBuf::new(4096), 2).unwrap();
    let c = wait_for(&mut ring, 2);
    assert_eq!(c.result, 5);
    assert_eq!(&c.buf.unwrap()[..], b"hello");
}

#[test]
fn send_zc_returns_the_buffer_only_with_its_notification() {
    let mut ring = Ring::new(16).unwrap();
    let (client, server) = connected_pair(&mut ring);
    let mut buf = AlignedBuf::zeroed(16384);
    buf.fill(7);
    ring.send_zc(client.as_raw_fd(), buf, 4096, 8192, 1).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.iter().any(|c: &Completion| matches!(c.kind, CompletionKind::SendZcNotified { .. })) {
        assert!(Instant::now() < deadline);
        ring.submit_and_wait(1).unwrap();
        ring.reap(&mut seen);
    }
    let result = seen.iter().find(|c| c.kind == CompletionKind::SendZcResult).expect("send result first");
    assert_eq!(result.result, 8192);
    assert!(result.buf.is_none(), "the kernel may still read the buffer at the send result");
    let notified = seen.iter().position(|c| matches!(c.kind, CompletionKind::SendZcNotified { .. })).unwrap();
    assert!(seen[notified].buf.is_some());
    assert_eq!(ring.in_flight(), 0);
    // Whether the kernel copied is its choice (it depends on the route and the kernel); the ring
    // counts what the notification reported (IORING_SEND_ZC_REPORT_USAGE).
    let CompletionKind::SendZcNotified { copied } = seen[notified].kind else { unreachable!() };
    assert_eq!(ring.zc_copied_notifications, copied as u64);
    eprintln!("send_zc on loopback: kernel reported copied = {copied}");
    let mut got = 0;
    while got < 8192 {
        ring.recv(server.as_raw_fd(), AlignedBuf::new(16384), 2).unwrap();
        let c = wait_for(&mut ring, 2);
        assert!(c.result > 0);
        assert!(c.buf.unwrap().iter().all(|&b| b == 7));
        got += c.result as usize;
    }
    assert_eq!(got, 8192);
}

#[test]
fn timeout_fires() {
    let mut ring = Ring::new(8).unwrap();
    let started = Instant::now();
    ring.timeout(Duration::from_millis(20), 1).unwrap();
    assert_eq!(wait_for(&mut ring, 1).result, -libc::ETIME);
    assert!(started.elapsed() >= Duration::from_millis(19));
}

#[test]
fn cancelled_recv_keeps_its_buffer_until_its_completion() {
    let mut ring = Ring::new(16).unwrap();
    let (_client, server) = connected_pair(&mut ring);
    let op = ring.recv(server.as_raw_fd(), AlignedBuf::new(4096), 5).unwrap();
    ring.submit().unwrap();
    assert_eq!(ring.in_flight(), 1);
    ring.cancel(op).unwrap();
    let c = wait_for(&mut ring, 5);
    assert_eq!(c.result, -libc::ECANCELED);
    assert!(c.buf.is_some(), "the cancelled operation hands its buffer back");
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn msg_ring_wakes_another_ring() {
    let mut receiver = Ring::new(8).unwrap();
    let receiver_fd = receiver.fd();
    let sender = std::thread::spawn(move || {
        let mut ring = Ring::new(8).unwrap();
        ring.msg_ring(receiver_fd, 42, 1).unwrap();
        assert_eq!(wait_for(&mut ring, 1).result, 0);
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while !seen.iter().any(|c: &Completion| c.kind == CompletionKind::Message) {
        assert!(Instant::now() < deadline);
        receiver.timeout(Duration::from_millis(50), 9).unwrap();
        receiver.submit_and_wait(1).unwrap();
        receiver.reap(&mut seen);
    }
    let message = seen.iter().find(|c| c.kind == CompletionKind::Message).unwrap();
    assert_eq!(message.token, 42);
    sender.join().unwrap();
}

#[test]
fn doorbell_wakes_a_sleeping_ring_through_its_eventfd() {
    use mirrorlog::io::doorbell::Doorbell;
    use std::sync::Arc;
    let doorbell = Arc::new(Doorbell::new().unwrap());
    let mut ring = Ring::new(8).unwrap();
    ring.read_eventfd(doorbell.eventfd(), 7).unwrap();
    let observed = doorbell.observe();
    assert!(doorbell.try_sleep(observed));
    let remote = doorbell.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        assert!(remote.ring(), "the ring was asleep");
        assert!(!remote.ring(), "one eventfd write per sleep");
    });
    let c = wait_for(&mut ring, 7);
    assert_eq!(c.result, 8);
    t.join().unwrap();
}

#[test]
fn doorbell_refuses_sleep_after_a_ring_since_observation() {
    let doorbell = mirrorlog::io::doorbell::Doorbell::without_eventfd();
    let observed = doorbell.observe();
    assert!(!doorbell.ring(), "nobody sleeps yet");
    assert!(!doorbell.try_sleep(observed), "work arrived after the observation");
    let observed = doorbell.observe();
    assert!(doorbell.try_sleep(observed));
    doorbell.awake();
    assert!(!doorbell.ring());
}

/// Polling before sleeping changes when the shard sleeps, never what it gets: a completion that
/// arrives during the poll is reaped, and one that arrives after it is waited for.
#[test]
fn polling_before_sleeping_returns_every_completion() {
    let mut ring = Ring::new(16).unwrap();
    for (after, poll) in [
        (Duration::from_micros(100), Duration::from_millis(50)),
        (Duration::from_millis(20), Duration::from_micros(200)),
    ] {
        ring.timeout(after, 7).unwrap();
        let mut got = Vec::new();
        while got.is_empty() {
            ring.submit_and_wait_polling(poll).unwrap();
            ring.reap(&mut got);
        }
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].token, 7);
    }
    // Nothing in flight and nothing arriving: a zero poll is a plain submit-and-wait.
    ring.timeout(Duration::from_micros(10), 8).unwrap();
    ring.submit_and_wait_polling(Duration::ZERO).unwrap();
    let mut got = Vec::new();
    ring.reap(&mut got);
    assert_eq!(got.iter().map(|c| c.token).collect::<Vec<_>>(), vec![8]);
}

/// Both ways of making a write durable: the completion comes back through the ring with the
/// byte count and the shared buffer (its last holder, so `release` returns it), and the bytes
/// are in the file.
#[test]
fn durable_writes_complete_through_the_ring_with_their_buffer_by_thread_and_by_ring() {
    use mirrorlog::io::ring::DurableWrites;
    use mirrorlog::io::shared_buf::SharedBuf;
    for mode in [DurableWrites::Thread, DurableWrites::Ring] {
        let dir = scratch();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 3 * 4096]).unwrap();
        let file = std::sync::Arc::new(open_direct(&path).unwrap());
        let mut ring = Ring::new(8).unwrap();
        ring.set_durable_writes(mode, Duration::from_micros(50));
        for round in 0..3u64 {
            let mut buf = AlignedBuf::zeroed(8192);
            buf.iter_mut().enumerate().for_each(|(i, b)| *b = (i as u64 * 7 + round) as u8);
            let expected = buf.to_vec();
            let token = 10 + round;
            ring.write_shared_durable(&file, SharedBuf::new(buf), 8192, 4096, token).unwrap();
            let c = wait_for(&mut ring, token);
            assert_eq!(c.result, 8192, "{mode:?}");
            assert_eq!(c.kind, CompletionKind::Done);
            let back = c.shared.expect("the shared buffer comes back").release();
            assert_eq!(&back.expect("the ring's reference is the last")[..], &expected[..], "{mode:?}");
            assert_eq!(&std::fs::read(&path).unwrap()[4096..4096 + 8192], &expected[..], "{mode:?}");
        }
        assert_eq!(ring.in_flight(), 0);
    }
}

/// A durable write the kernel refuses (O_DIRECT at an unaligned offset) reports the error through
/// the ring, from the thread as from the ring, and the thread goes on serving later writes.
#[test]
fn a_failed_durable_write_reports_its_errno_and_the_thread_goes_on() {
    use mirrorlog::io::ring::DurableWrites;
    use mirrorlog::io::shared_buf::SharedBuf;
    for mode in [DurableWrites::Thread, DurableWrites::Ring] {
        let dir = scratch();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let file = std::sync::Arc::new(open_direct(&path).unwrap());
        let mut ring = Ring::new(8).unwrap();
        ring.set_durable_writes(mode, Duration::from_micros(50));
        ring.write_shared_durable(&file, SharedBuf::new(AlignedBuf::zeroed(4096)), 4096, 100, 1).unwrap();
        let c = wait_for(&mut ring, 1);
        assert_eq!(c.result, -libc::EINVAL, "{mode:?}");
        assert!(c.shared.is_some());
        ring.write_shared_durable(&file, SharedBuf::new(AlignedBuf::zeroed(4096)), 4096, 4096, 2).unwrap();
        assert_eq!(wait_for(&mut ring, 2).result, 4096, "{mode:?}");
    }
}

/// A ring dropped while its thread's write is in flight waits for that write's completion and
/// joins the thread: no hang, and the buffer is not freed under the write.
#[test]
fn a_ring_dropped_with_a_durable_write_in_flight_waits_for_it() {
    use mirrorlog::io::shared_buf::SharedBuf;
    let dir = scratch();
    let path = dir.path().join("f");
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    let file = std::sync::Arc::new(open_direct(&path).unwrap());
    let started = Instant::now();
    for i in 0..20u64 {
        let mut ring = Ring::new(8).unwrap();
        let mut buf = AlignedBuf::zeroed(64 * 1024);
        buf.fill(i as u8 + 1);
        ring.write_shared_durable(&file, SharedBuf::new(buf), 64 * 1024, i * 4096, 1).unwrap();
        drop(ring);
        assert_eq!(std::fs::read(&path).unwrap()[i as usize * 4096], i as u8 + 1, "write {i} landed");
    }
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// Several logs on one ring (several databases on one shard): a durable write submitted while the
/// thread has one goes through the ring instead. All complete, each with its own buffer and bytes.
#[test]
fn durable_writes_of_several_logs_at_once_all_complete() {
    use mirrorlog::io::ring::DurableWrites;
    use mirrorlog::io::shared_buf::SharedBuf;
    let dir = scratch();
    let mut ring = Ring::new(16).unwrap();
    ring.set_durable_writes(DurableWrites::Thread, Duration::ZERO);
    let files: Vec<_> = (0..4)
        .map(|i| {
            let path = dir.path().join(format!("log{i}"));
            std::fs::write(&path, vec![0u8; 4096]).unwrap();
            (path.clone(), std::sync::Arc::new(open_direct(&path).unwrap()))
        })
        .collect();
    for round in 0..3u8 {
        for (i, (_, file)) in files.iter().enumerate() {
            let mut buf = AlignedBuf::zeroed(4096);
            buf.fill(round * 16 + i as u8 + 1);
            ring.write_shared_durable(file, SharedBuf::new(buf), 4096, 0, i as u64).unwrap();
        }
        for (i, (path, _)) in files.iter().enumerate() {
            let c = wait_for(&mut ring, i as u64);
            assert_eq!(c.result, 4096);
            assert!(c.shared.expect("buffer back").release().is_some(), "the ring's reference is the last");
            assert_eq!(std::fs::read(path).unwrap()[0], round * 16 + i as u8 + 1);
        }
        assert_eq!(ring.in_flight(), 0);
    }
}

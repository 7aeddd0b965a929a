//! One io_uring per shard thread, with owned resources per operation.
//!
//! Every submitted operation owns what the kernel may touch until its completion arrives: the data
//! buffer, the timespec of a timeout, the address storage of an accept or connect. Those live in a
//! slot of `Ring::slots`; the slot index is the SQE's `user_data`. A slot is freed only on the
//! operation's final completion, so a cancelled operation keeps its buffer until the kernel is done
//! with it (io_uring_enter(2): the kernel may still access the memory until the CQE is posted).
//!
//! SEND_ZC posts two completions (io_uring_enter(2), IORING_OP_SEND_ZC): the send result, with
//! IORING_CQE_F_MORE set, and later a notification (IORING_CQE_F_NOTIF) once the kernel no longer
//! reads the buffer. The buffer comes back with the notification, never earlier.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::error::{Error, Result};
use crate::io::buffer::AlignedBuf;

/// The caller's name for an operation, handed back with its completion.
pub type Token = u64;

/// Identifies an operation in flight (for cancellation): its slot and the slot's generation, so
/// that cancelling an operation that already finished can never hit the slot's next occupant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpId(u64);

/// `user_data` = slot index (low 32 bits) | generation (bits 32..63); bit 63 marks messages.
fn user_data_of(index: u32, generation: u32) -> u64 {
    index as u64 | ((generation as u64 & 0x7fff_ffff) << 32)
}

/// Set in a SEND_ZC notification's result when the kernel copied instead (io_uring_enter(2)).
const IORING_NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;

/// Receive flag (in the entry's ioprio field): arm the readiness poll before trying
/// (io_uring_enter(2); the io-uring crate does not export it).
const IORING_RECVSEND_POLL_FIRST: u16 = 1;
/// Asks SEND_ZC to report in its notification whether it copied (io_uring_enter(2)).
const IORING_SEND_ZC_REPORT_USAGE: u16 = 1 << 3;

/// `user_data` tags outside the slot index space.
const USER_DATA_CANCEL: u64 = u64::MAX;
/// A message from another ring (IORING_OP_MSG_RING) carries this bit in its `user_data`.
pub const USER_DATA_MESSAGE_BIT: u64 = 1 << 63;

/// Memory the kernel may touch while an operation is in flight; the variants are only held, never
/// read, so that the memory lives exactly as long as the operation.
#[allow(dead_code)]
enum Held {
    Nothing,
    Buf(AlignedBuf),
    /// A buffer with more than one reader in flight: the log block being written to disk and
    /// sent to the mirror at once. Each operation holds a reference; neither writes to it.
    Shared(crate::io::shared_buf::SharedBuf),
    /// A sendmsg: its header, the I/O vectors pointing into `head` and the shared body.
    Msg(Box<HeldMsg>),
    Timespec(Box<types::Timespec>),
    Accept(Box<(libc::sockaddr_storage, libc::socklen_t)>),
    Connect(Box<(libc::sockaddr_storage, libc::socklen_t)>),
    Word(Box<u64>),
}

/// What a SENDMSG_ZC keeps alive: `msg` points at `iov`, which points into `head` and `body`.
struct HeldMsg {
    msg: libc::msghdr,
    iov: [libc::iovec; 2],
    #[allow(dead_code)] // only held
    head: Vec<u8>,
    body: crate::io::shared_buf::SharedBuf,
}

struct Slot {
    token: Token,
    held: Held,
    /// The file the operation works on, kept open until its final completion: the kernel looks
    /// the descriptor up only when it takes the submission, which may be after the caller let go.
    #[allow(dead_code)] // only held
    file: Option<std::sync::Arc<std::fs::File>>,
    /// A write handed to the durable-write thread (counted in `thread_writes_in_flight`).
    on_thread: bool,
}

/// What a completion reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionKind {
    /// The operation finished; any buffer is handed back.
    Done,
    /// SEND_ZC's first completion: bytes sent (or an error); the buffer is still the kernel's.
    SendZcResult,
    /// SEND_ZC's notification: the kernel released the buffer. `copied` is true when the kernel
    /// fell back to copying (always the case on loopback).
    SendZcNotified { copied: bool },
    /// A message sent by another ring with `msg_ring`; `token` carries its payload.
    Message,
}

#[derive(Debug)]
pub struct Completion {
    pub token: Token,
    pub result: i32,
    pub kind: CompletionKind,
    pub buf: Option<AlignedBuf>,
    /// The shared buffer of a `write_shared_at` or `send_zc_shared`, handed back with the final
    /// completion (the caller recycles it once no other operation holds it).
    pub shared: Option<crate::io::shared_buf::SharedBuf>,
    /// The peer of an accepted connection.
    pub peer: Option<SocketAddr>,
}

impl Completion {
    /// The result as an `io::Result` of a byte count or file descriptor.
    pub fn io_result(&self) -> std::io::Result<u32> {
        if self.result < 0 {
            Err(std::io::Error::from_raw_os_error(-self.result))
        } else {
            Ok(self.result as u32)
        }
    }
}

/// How `Ring::write_shared_durable` makes a write durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurableWrites {
    /// A blocking pwritev2(RWF_DSYNC) on the ring's durable-write thread (`io::durable_writer`).
    Thread,
    /// An io_uring write with RWF_DSYNC.
    Ring,
}

impl DurableWrites {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "thread" => Some(Self::Thread),
            "ring" => Some(Self::Ring),
            _ => None,
        }
    }
}

pub struct Ring {
    /// Declared first so that it is dropped (its thread joined) before the ring it posts to is
    /// closed; `Drop` has waited for its writes by then.
    durable_writer: Option<crate::io::durable_writer::DurableWriter>,
    durable_writes: DurableWrites,
    /// How long the durable-write thread polls for the next write before it sleeps.
    durable_write_poll: Duration,
    /// The core the durable-write thread is pinned to (`shard::spawn` picks one).
    durable_write_core: Option<usize>,
    /// Writes handed to the durable-write thread and not yet completed (0 or 1).
    thread_writes_in_flight: usize,
    uring: IoUring,
    slots: Vec<Option<Slot>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    in_flight: usize,
    /// Completions taken out of the queue by a synchronous wait for other ones (a checkpoint's
    /// page writes) and handed back by the next `reap`.
    stashed: std::collections::VecDeque<Completion>,
    /// SEND_ZC notifications that reported a copy instead of zero-copy (exposed as a metric).
    pub zc_copied_notifications: u64,
    /// Completion entries copied out by `reap` (kept to reuse its allocation).
    reaped: Vec<(u64, i32, u32)>,
}

impl Ring {
    pub fn new(entries: u32) -> Result<Self> {
        // One thread submits to a ring (thread-per-core), so the kernel may defer completion work
        // to our next io_uring_enter instead of interrupting the thread with task-work IPIs
        // (io_uring_setup(2): IORING_SETUP_SINGLE_ISSUER, IORING_SETUP_DEFER_TASKRUN; Linux 6.1).
        // Measured here: redis-benchmark GET at 64 clients went from 89k to 155k requests/s.
        let uring = IoUring::builder()
            .setup_clamp()
            .setup_single_issuer()
            .setup_defer_taskrun()
            // Deferred completions then raise IORING_SQ_TASKRUN, so a submit that does not wait
            // still runs them (the io-uring crate adds GETEVENTS when it sees the flag).
            .setup_taskrun_flag()
            .build(entries)
            .map_err(crate::io::probe::explain_setup_error)?;
        Ok(Self {
            durable_writer: None,
            durable_writes: DurableWrites::Thread,
            durable_write_poll: Duration::ZERO,
            durable_write_core: None,
            thread_writes_in_flight: 0,
            uring,
            slots: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            stashed: std::collections::VecDeque::new(),
            in_flight: 0,
            zc_copied_notifications: 0,
            reaped: Vec::new(),
        })
    }

    /// The ring's file descriptor, the target of `msg_ring` from other rings.
    pub fn fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.uring.as_raw_fd()
    }

    /// Operations submitted and not yet finished (SEND_ZC counts until its notification).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn slot(&mut self, token: Token, held: Held, file: Option<std::sync::Arc<std::fs::File>>) -> u32 {
        let slot = Slot { token, held, file, on_thread: false };
        self.in_flight += 1;
        match self.free.pop() {
            Some(index) => {
                self.slots[index as usize] = Some(slot);
                self.generations[index as usize] = self.generations[index as usize].wrapping_add(1);
                index
            }
            None => {
                self.slots.push(Some(slot));
                self.generations.push(0);
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn push(&mut self, entry: squeue::Entry) -> Result<()> {
        loop {
            // SAFETY: every pointer in `entry` refers to memory held in a slot (or owned by the
            // caller for the fd), which stays alive until the operation's final completion.
            let pushed = unsafe { self.uring.submission().push(&entry) };
            if pushed.is_ok() {
                return Ok(());
            }
            self.uring.submit().map_err(|e| Error::io("io_uring submit (queue full)", e))?;
        }
    }

    fn submit_entry(&mut self, entry: squeue::Entry, token: Token, held: Held) -> Result<OpId> {
        self.submit_entry_with_file(entry, token, held, None)
    }

    fn submit_entry_with_file(
        &mut self,
        entry: squeue::Entry,
        token: Token,
        held: Held,
        file: Option<std::sync::Arc<std::fs::File>>,
    ) -> Result<OpId> {
        let index = self.slot(token, held, file);
        let user_data = user_data_of(index, self.generations[index as usize]);
        if let Err(e) = self.push(entry.user_data(user_data)) {
            self.release(index);
            return Err(e);
        }
        Ok(OpId(user_data))
    }

    fn held_buf_ptr(held: &mut Held) -> *mut u8 {
        match held {
            Held::Buf(buf) => buf.as_mut_ptr(),
            _ => std::ptr::null_mut(),
        }
    }

    /// Writes `buf[..len]` at `offset`. `rw_flags` may carry RWF_DSYNC to make the write durable
    /// by itself (pwritev2(2): "per-write equivalent of O_DSYNC").
    pub fn write_at(
        &mut self,
        fd: RawFd,
        buf: AlignedBuf,
        len: usize,
        offset: u64,
        rw_flags: i32,
        token: Token,
    ) -> Result<OpId> {
        assert!(len <= buf.capacity());
        let mut held = Held::Buf(buf);
        let ptr = Self::held_buf_ptr(&mut held);
        let entry = opcode::Write::new(types::Fd(fd), ptr, len as u32).offset(offset).rw_flags(rw_flags).build();
        self.submit_entry(entry, token, held)
    }

    /// `write_at` on a shared file, which the ring keeps open until the write's completion.
    pub fn write_file_at(
        &mut self,
        file: &std::sync::Arc<std::fs::File>,
        buf: AlignedBuf,
        len: usize,
        offset: u64,
        rw_flags: i32,
        token: Token,
    ) -> Result<OpId> {
        use std::os::fd::AsRawFd;
        assert!(len <= buf.capacity());
        let mut held = Held::Buf(buf);
        let ptr = Self::held_buf_ptr(&mut held);
        let entry =
            opcode::Write::new(types::Fd(file.as_raw_fd()), ptr, len as u32).offset(offset).rw_flags(rw_flags).build();
        self.submit_entry_with_file(entry, token, held, Some(file.clone()))
    }

    /// `write_file_at` from a shared buffer (read-only: the same block may be in a zero-copy send
    /// at the same time). The reference comes back in `Completion::shared`.
    pub fn write_shared_at(
        &mut self,
        file: &std::sync::Arc<std::fs::File>,
        buf: crate::io::shared_buf::SharedBuf,
        len: usize,
        offset: u64,
        rw_flags: i32,
        token: Token,
    ) -> Result<OpId> {
        use std::os::fd::AsRawFd;
        assert!(len <= buf.capacity());
        let ptr = buf.as_ptr();
        let entry =
            opcode::Write::new(types::Fd(file.as_raw_fd()), ptr, len as u32).offset(offset).rw_flags(rw_flags).build();
        self.submit_entry_with_file(entry, token, Held::Shared(buf), Some(file.clone()))
    }

    /// Chooses how `write_shared_durable` makes writes durable, and how long the durable-write
    /// thread polls for the next write before it sleeps (`io::durable_writer`); takes effect for
    /// a thread not started yet.
    pub fn set_durable_writes(&mut self, mode: DurableWrites, poll: Duration) {
        self.durable_writes = mode;
        self.durable_write_poll = poll;
    }

    /// Pins the durable-write thread (once started) to `core`; `None` leaves it to the scheduler.
    pub fn set_durable_write_core(&mut self, core: Option<usize>) {
        self.durable_write_core = core;
    }

    /// Writes `buf[..len]` at `offset` and makes it durable, as one operation whose completion
    /// (bytes written, or a negative errno) comes back through this ring with the buffer, like
    /// `write_shared_at` with RWF_DSYNC. With `DurableWrites::Thread` (the default) the write is a
    /// blocking pwritev2(RWF_DSYNC) on this ring's durable-write thread, which posts the
    /// completion here with MSG_RING (`io::durable_writer` says why). The thread takes one write
    /// at a time: a write submitted while it has one (several databases' logs on one shard) goes
    /// through the ring, so that the logs still write in parallel.
    pub fn write_shared_durable(
        &mut self,
        file: &std::sync::Arc<std::fs::File>,
        buf: crate::io::shared_buf::SharedBuf,
        len: usize,
        offset: u64,
        token: Token,
    ) -> Result<OpId> {
        if self.durable_writes == DurableWrites::Ring || self.thread_writes_in_flight > 0 {
            return self.write_shared_at(file, buf, len, offset, libc::RWF_DSYNC, token);
        }
        assert!(len <= buf.capacity());
        if self.durable_writer.is_none() {
            self.durable_writer = Some(crate::io::durable_writer::DurableWriter::start(
                self.fd(),
                self.durable_write_poll,
                self.durable_write_core,
            )?);
        }
        let thread_share = buf.share();
        let index = self.slot(token, Held::Shared(buf), Some(file.clone()));
        let user_data = user_data_of(index, self.generations[index as usize]);
        let write =
            crate::io::durable_writer::DurableWrite { file: file.clone(), buf: thread_share, len, offset, user_data };
        let writer = self.durable_writer.as_ref().expect("started above");
        match writer.push(write) {
            Ok(()) => {
                self.slots[index as usize].as_mut().expect("taken above").on_thread = true;
                self.thread_writes_in_flight += 1;
                Ok(OpId(user_data))
            }
            Err(write) => {
                // Cannot happen with one write at a time; the ring can still do it.
                drop(write);
                let slot = self.release(index);
                let Held::Shared(buf) = slot.held else { unreachable!("held above") };
                self.write_shared_at(file, buf, len, offset, libc::RWF_DSYNC, token)
            }
        }
    }

    /// Zero-copy send of `buf[start..start + len]` from a shared buffer; the reference comes back
    /// with the notification (`SendZcNotified`), when the kernel no longer reads the memory.
    pub fn send_zc_shared(
        &mut self,
        socket: RawFd,
        buf: crate::io::shared_buf::SharedBuf,
        start: usize,
        len: usize,
        token: Token,
    ) -> Result<OpId> {
        assert!(start + len <= buf.capacity());
        // SAFETY: start + len is within the allocation (asserted above); the holder kept in the
        // slot keeps the memory alive until the notification.
        let ptr = unsafe { buf.as_ptr().add(start) };
        let entry = opcode::SendZc::new(types::Fd(socket), ptr, len as u32)
            .flags(libc::MSG_NOSIGNAL)
            .zc_flags(IORING_SEND_ZC_REPORT_USAGE)
            .build();
        self.submit_entry(entry, token, Held::Shared(buf))
    }

    /// Zero-copy sendmsg(2) of `head` followed by `body[start..start + len]`, as one operation
    /// (IORING_OP_SENDMSG_ZC, Linux 6.1): a frame header and a log block leave together, with no
    /// second submission between them. The body comes back with the notification.
    pub fn sendmsg_zc_shared(
        &mut self,
        socket: RawFd,
        head: Vec<u8>,
        body: crate::io::shared_buf::SharedBuf,
        start: usize,
        len: usize,
        token: Token,
    ) -> Result<OpId> {
        assert!(start + len <= body.capacity());
        // SAFETY: msghdr and iovec are plain old data; all zeroes is a valid value.
        let mut held =
            Box::new(HeldMsg { msg: unsafe { std::mem::zeroed() }, iov: unsafe { std::mem::zeroed() }, head, body });
        held.iov[0] = libc::iovec { iov_base: held.head.as_ptr() as *mut libc::c_void, iov_len: held.head.len() };
        // SAFETY: start + len is within the allocation (asserted above).
        let body_ptr = unsafe { held.body.as_ptr().add(start) };
        held.iov[1] = libc::iovec { iov_base: body_ptr as *mut libc::c_void, iov_len: len };
        held.msg.msg_iov = held.iov.as_mut_ptr();
        held.msg.msg_iovlen = 2;
        // The box does not move while the operation is in flight (it is held in the slot), so
        // the pointers above stay valid; the kernel reads them at submission and while sending.
        let msg_ptr = &held.msg as *const libc::msghdr;
        let entry = opcode::SendMsgZc::new(types::Fd(socket), msg_ptr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .ioprio(IORING_SEND_ZC_REPORT_USAGE)
            .build();
        self.submit_entry(entry, token, Held::Msg(held))
    }

    /// Reads `len` bytes at `offset` into the start of `buf`; the buffer's `len` is set to the
    /// bytes read when it comes back.
    pub fn read_at(&mut self, fd: RawFd, buf: AlignedBuf, len: usize, offset: u64, token: Token) -> Result<OpId> {
        assert!(len <= buf.capacity());
        let mut held = Held::Buf(buf);
        let ptr = Self::held_buf_ptr(&mut held);
        let entry = opcode::Read::new(types::Fd(fd), ptr, len as u32).offset(offset).build();
        self.submit_entry(entry, token, held)
    }

    /// fdatasync(2) (`datasync`) or fsync(2).
    pub fn fsync(&mut self, fd: RawFd, datasync: bool, token: Token) -> Result<OpId> {
        let flags = if datasync { types::FsyncFlags::DATASYNC } else { types::FsyncFlags::empty() };
        let entry = opcode::Fsync::new(types::Fd(fd)).flags(flags).build();
        self.submit_entry(entry, token, Held::Nothing)
    }

    /// fallocate(2) with mode 0: reserve `len` bytes at `offset`.
    pub fn fallocate(&mut self, fd: RawFd, offset: u64, len: u64, token: Token) -> Result<OpId> {
        let entry = opcode::Fallocate::new(types::Fd(fd), len).offset(offset).build();
        self.submit_entry(entry, token, Held::Nothing)
    }

    pub fn accept(&mut self, listener: RawFd, token: Token) -> Result<OpId> {
        // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
        let mut held = Box::new((unsafe { std::mem::zeroed::<libc::sockaddr_storage>() }, 0 as libc::socklen_t));
        held.1 = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let addr = &mut held.0 as *mut _ as *mut libc::sockaddr;
        let len = &mut held.1 as *mut libc::socklen_t;
        let entry = opcode::Accept::new(types::Fd(listener), addr, len).flags(libc::SOCK_CLOEXEC).build();
        self.submit_entry(entry, token, Held::Accept(held))
    }

    pub fn connect(&mut self, socket: RawFd, peer: SocketAddr, token: Token) -> Result<OpId> {
        let held = Box::new(crate::io::net::sockaddr_from(peer));
        let addr = &held.0 as *const _ as *const libc::sockaddr;
        let entry = opcode::Connect::new(types::Fd(socket), addr, held.1).build();
        self.submit_entry(entry, token, Held::Connect(held))
    }

    /// Receives up to `buf.capacity()` bytes; the buffer's `len` is set to the bytes received.
    pub fn recv(&mut self, socket: RawFd, buf: AlignedBuf, token: Token) -> Result<OpId> {
        self.recv_with_ioprio(socket, buf, token, 0)
    }

    /// Like `recv`, for a socket that is most likely empty now (a client that waits for its
    /// reply): the kernel arms its readiness poll at once instead of first trying a receive that
    /// would fail with EAGAIN (io_uring_enter(2), IORING_RECVSEND_POLL_FIRST). Data already
    /// there is still received at once.
    pub fn recv_poll_first(&mut self, socket: RawFd, buf: AlignedBuf, token: Token) -> Result<OpId> {
        self.recv_with_ioprio(socket, buf, token, IORING_RECVSEND_POLL_FIRST)
    }

    fn recv_with_ioprio(&mut self, socket: RawFd, buf: AlignedBuf, token: Token, ioprio: u16) -> Result<OpId> {
        let cap = buf.capacity();
        let mut held = Held::Buf(buf);
        let ptr = Self::held_buf_ptr(&mut held);
        let entry = opcode::Recv::new(types::Fd(socket), ptr, cap as u32).ioprio(ioprio).build();
        self.submit_entry(entry, token, held)
    }

    /// Sends `buf[start..start + len]` (copying send).
    pub fn send(&mut self, socket: RawFd, buf: AlignedBuf, start: usize, len: usize, token: Token) -> Result<OpId> {
        assert!(start + len <= buf.capacity());
        let mut held = Held::Buf(buf);
        // SAFETY: start + len is within the allocation (asserted above).
        let ptr = unsafe { Self::held_buf_ptr(&mut held).add(start) };
        let entry = opcode::Send::new(types::Fd(socket), ptr, len as u32).flags(libc::MSG_NOSIGNAL).build();
        self.submit_entry(entry, token, held)
    }

    /// Zero-copy send of `buf[start..start + len]`. Two completions follow: `SendZcResult`, then
    /// `SendZcNotified` with the buffer.
    pub fn send_zc(&mut self, socket: RawFd, buf: AlignedBuf, start: usize, len: usize, token: Token) -> Result<OpId> {
        assert!(start + len <= buf.capacity());
        let mut held = Held::Buf(buf);
        // SAFETY: start + len is within the allocation (asserted above).
        let ptr = unsafe { Self::held_buf_ptr(&mut held).add(start) };
        let entry = opcode::SendZc::new(types::Fd(socket), ptr, len as u32)
            .flags(libc::MSG_NOSIGNAL)
            .zc_flags(IORING_SEND_ZC_REPORT_USAGE)
            .build();
        self.submit_entry(entry, token, held)
    }

    /// Completes with -ETIME after `after`.
    pub fn timeout(&mut self, after: Duration, token: Token) -> Result<OpId> {
        let held = Box::new(types::Timespec::new().sec(after.as_secs()).nsec(after.subsec_nanos()));
        let entry = opcode::Timeout::new(&*held as *const types::Timespec).build();
        self.submit_entry(entry, token, Held::Timespec(held))
    }

    /// Reads the 8-byte counter of an eventfd (the wake-up from threads that have no ring).
    pub fn read_eventfd(&mut self, eventfd: RawFd, token: Token) -> Result<OpId> {
        let mut held = Box::new(0u64);
        let ptr = &mut *held as *mut u64 as *mut u8;
        let entry = opcode::Read::new(types::Fd(eventfd), ptr, 8).build();
        self.submit_entry(entry, token, Held::Word(held))
    }

    /// Posts a completion carrying `payload` on another ring (IORING_OP_MSG_RING): the
    /// cross-shard wake-up. `payload` must not have `USER_DATA_MESSAGE_BIT` set.
    pub fn msg_ring(&mut self, target_ring_fd: RawFd, payload: u64, token: Token) -> Result<OpId> {
        assert_eq!(payload & USER_DATA_MESSAGE_BIT, 0, "message payload uses the tag bit");
        let entry =
            opcode::MsgRingData::new(types::Fd(target_ring_fd), 0, payload | USER_DATA_MESSAGE_BIT, None).build();
        self.submit_entry(entry, token, Held::Nothing)
    }

    /// Asks the kernel to cancel an operation. Its own completion (usually -ECANCELED) still
    /// arrives and hands back its buffer.
    pub fn cancel(&mut self, op: OpId) -> Result<()> {
        let entry = opcode::AsyncCancel::new(op.0).build().user_data(USER_DATA_CANCEL);
        self.push(entry)
    }

    /// Keeps a completion for the next `reap` (see `stashed`).
    pub fn stash(&mut self, completion: Completion) {
        self.stashed.push_back(completion);
    }

    /// Submits queued entries and waits for at least `want` completions (not at all while
    /// stashed completions wait to be reaped).
    pub fn submit_and_wait(&mut self, want: usize) -> Result<()> {
        let want = if self.stashed.is_empty() { want } else { 0 };
        self.wait_ignoring_stash(want)
    }

    /// Submits and waits for `want` new completions even while some are stashed (a synchronous
    /// wait for particular operations).
    pub fn wait_ignoring_stash(&mut self, want: usize) -> Result<()> {
        loop {
            match self.uring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // EBUSY: the completion queue is full; the caller reaps and comes back.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(Error::io("io_uring_enter", e)),
            }
        }
    }

    /// Submits queued entries without waiting.
    pub fn submit(&mut self) -> Result<()> {
        self.submit_and_wait(0)
    }

    /// Whether a completion can be reaped without sleeping: one stashed, one in the completion
    /// queue, or deferred completion work the kernel flags with IORING_SQ_TASKRUN (a submit runs
    /// it; io_uring_setup(2), IORING_SETUP_TASKRUN_FLAG).
    pub fn has_ready(&mut self) -> bool {
        !self.stashed.is_empty() || self.uring.submission().taskrun() || !self.uring.completion().is_empty()
    }

    /// Like `submit_and_wait(1)`, but first polls for up to `poll` (checking shared memory, no
    /// system call) before sleeping in io_uring_enter. A shard that sleeps is woken by an
    /// interrupt, and in a virtual machine a halted vCPU is woken through the host scheduler,
    /// which costs tens of microseconds per request at low load; polling briefly keeps the
    /// core awake for the reply that is about to arrive. A zero `poll` sleeps at once.
    pub fn submit_and_wait_polling(&mut self, poll: std::time::Duration) -> Result<()> {
        if poll.is_zero() {
            return self.submit_and_wait(1);
        }
        // A busy shard finds work at once: one io_uring_enter, as without polling.
        if self.has_ready() {
            return self.submit();
        }
        self.submit()?;
        let started = std::time::Instant::now();
        loop {
            if self.uring.submission().taskrun() {
                return self.submit(); // runs the deferred completion work
            }
            if !self.stashed.is_empty() || !self.uring.completion().is_empty() {
                return Ok(()); // posted already: nothing to enter the kernel for
            }
            if started.elapsed() >= poll {
                return self.submit_and_wait(1);
            }
            // Another thread ready on this core (a partner process, a redo worker) runs first.
            std::thread::yield_now();
        }
    }

    fn release(&mut self, index: u32) -> Slot {
        let slot = self.slots[index as usize].take().expect("completion for a free slot");
        self.free.push(index);
        self.in_flight -= 1;
        if slot.on_thread {
            self.thread_writes_in_flight -= 1;
        }
        slot
    }

    /// Takes every completion that has arrived, in order.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        out.extend(self.stashed.drain(..));
        let mut raw = std::mem::take(&mut self.reaped);
        raw.extend(self.uring.completion().map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())));
        for (user_data, result, flags) in raw.drain(..) {
            if user_data == USER_DATA_CANCEL {
                continue;
            }
            if user_data & USER_DATA_MESSAGE_BIT != 0 {
                let payload = user_data & !USER_DATA_MESSAGE_BIT;
                out.push(Completion {
                    token: payload,
                    result,
                    kind: CompletionKind::Message,
                    buf: None,
                    shared: None,
                    peer: None,
                });
                continue;
            }
            let index = user_data as u32;
            if self.slots.get(index as usize).and_then(|s| s.as_ref()).is_none() {
                continue; // cannot happen: every slot is freed by its own final completion
            }
            if cqueue::notif(flags) {
                let slot = self.release(index);
                let copied = (result as u32) & IORING_NOTIF_USAGE_ZC_COPIED != 0;
                self.zc_copied_notifications += copied as u64;
                let (buf, shared) = match slot.held {
                    Held::Buf(buf) => (Some(buf), None),
                    Held::Shared(shared) => (None, Some(shared)),
                    Held::Msg(msg) => (None, Some(msg.body)),
                    _ => (None, None),
                };
                out.push(Completion {
                    token: slot.token,
                    result: 0,
                    kind: CompletionKind::SendZcNotified { copied },
                    buf,
                    shared,
                    peer: None,
                });
                continue;
            }
            if cqueue::more(flags) {
                // SEND_ZC's first completion: the slot (and the buffer) stay until the notification.
                let slot = self.slots[index as usize].as_ref().expect("completion for a free slot");
                out.push(Completion {
                    token: slot.token,
                    result,
                    kind: CompletionKind::SendZcResult,
                    buf: None,
                    shared: None,
                    peer: None,
                });
                continue;
            }
            let slot = self.release(index);
            let (buf, shared, peer) = match slot.held {
                Held::Buf(mut buf) => {
                    if result > 0 {
                        // For reads and receives the result is the byte count now initialized.
                        buf.set_len((result as usize).min(buf.capacity()));
                    }
                    (Some(buf), None, None)
                }
                Held::Shared(shared) => (None, Some(shared), None),
                Held::Msg(msg) => (None, Some(msg.body), None),
                Held::Accept(addr) if result >= 0 => (None, None, crate::io::net::sockaddr_to(&addr.0, addr.1)),
                _ => (None, None, None),
            };
            // A SEND_ZC that fails posts a single CQE without IORING_CQE_F_MORE: it ends here, as
            // `Done`, with its buffer.
            out.push(Completion { token: slot.token, result, kind: CompletionKind::Done, buf, shared, peer });
        }
        self.reaped = raw;
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Buffers held by operations still in flight must outlive the kernel's use of them: cancel
        // everything and wait for the completions before the slots are freed.
        if self.in_flight == 0 {
            return;
        }
        for index in 0..self.slots.len() {
            if self.slots[index].is_some() {
                let _ = self.cancel(OpId(user_data_of(index as u32, self.generations[index])));
            }
        }
        let mut sink = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.in_flight > 0 && std::time::Instant::now() < deadline {
            if self.submit_and_wait(1).is_err() {
                break;
            }
            sink.clear();
            self.reap(&mut sink);
        }
        if self.in_flight > 0 {
            // The kernel may still write into these buffers: leak them rather than free them.
            for slot in self.slots.drain(..).flatten() {
                std::mem::forget(slot);
            }
        }
    }
}

//! Socket set-up around the ring: listeners, sockets to connect, address conversion.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};

use crate::error::{IoContext, Result};

/// How long `listen` retries an address in use.
const BIND_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// A listening TCP socket (blocking mode is irrelevant: the ring does the accepting).
///
/// EADDRINUSE is retried for a few seconds: a process that was just killed may still hold its
/// listener, because its io_uring is torn down asynchronously after exit and an accept in
/// flight keeps a reference to the socket until then (io_uring_setup(2): the ring's resources
/// are released when its last reference goes). A restarted server then binds a moment later.
pub fn listen(addr: SocketAddr) -> Result<OwnedFd> {
    let started = std::time::Instant::now();
    let listener = loop {
        match TcpListener::bind(addr) {
            Ok(listener) => break listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && started.elapsed() < BIND_RETRY_FOR => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e).context(|| format!("bind {addr}")),
        }
    };
    // SAFETY: into_raw_fd hands over ownership of a valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(listener.into_raw_fd()) })
}

/// The local address a socket is bound to.
pub fn local_addr(fd: RawFd) -> Result<SocketAddr> {
    // SAFETY: storage is plain old data and large enough for any address.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the pointers refer to live locals of the sizes given.
    let rc = unsafe { libc::getsockname(fd, &mut storage as *mut _ as *mut libc::sockaddr, &mut len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(|| "getsockname".into());
    }
    sockaddr_to(&storage, len).ok_or_else(|| crate::error::Error::Config("unsupported address family".into()))
}

/// A new TCP socket for `connect`, with TCP_NODELAY (log blocks and acks must not wait for Nagle).
pub fn tcp_socket(peer: SocketAddr) -> Result<OwnedFd> {
    let family = if peer.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context(|| "socket".into());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_nodelay(fd)?;
    Ok(owned)
}

pub fn set_nodelay(fd: RawFd) -> Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the option value points to a live c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(|| "setsockopt TCP_NODELAY".into());
    }
    Ok(())
}

pub(crate) fn sockaddr_from(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all zeroes is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

pub(crate) fn sockaddr_to(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family and length say this storage holds a sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family and length say this storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::from((ip, u16::from_be(sin6.sin6_port))))
        }
        _ => None,
    }
}

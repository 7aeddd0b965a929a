//! Start-up checks: is io_uring usable here, does the kernel have the operations we use, does the
//! data directory's file system support O_DIRECT. Each failure names the likely cause.

use std::path::Path;

use io_uring::{opcode, IoUring, Probe};

use crate::error::{Error, Result};

/// Turns an io_uring_setup(2) failure into an error that says why it probably happened.
pub fn explain_setup_error(e: std::io::Error) -> Error {
    let likely_cause = match e.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel was built without io_uring (CONFIG_IO_URING=n) or is older than 5.1",
        Some(libc::EPERM) => "io_uring is disabled by sysctl kernel.io_uring_disabled or blocked by a seccomp profile (containers often do this)",
        Some(libc::ENOMEM) => "the locked-memory limit (ulimit -l) is too low for the ring",
        Some(libc::EMFILE) | Some(libc::ENFILE) => "too many open files",
        Some(libc::EINVAL) => "the kernel rejects a ring setup flag: Linux 6.1 or newer is needed (IORING_SETUP_SINGLE_ISSUER, IORING_SETUP_DEFER_TASKRUN)",
        _ => "unknown; see io_uring_setup(2)",
    };
    Error::IoUringUnavailable { detail: e.to_string(), likely_cause }
}

/// The operations the engine relies on, with the kernel release that introduced each.
const REQUIRED_OPS: &[(u8, &str, &str)] = &[
    (opcode::Read::CODE, "IORING_OP_READ", "5.6"),
    (opcode::Write::CODE, "IORING_OP_WRITE", "5.6"),
    (opcode::Fsync::CODE, "IORING_OP_FSYNC", "5.1"),
    (opcode::Fallocate::CODE, "IORING_OP_FALLOCATE", "5.6"),
    (opcode::Accept::CODE, "IORING_OP_ACCEPT", "5.5"),
    (opcode::Connect::CODE, "IORING_OP_CONNECT", "5.5"),
    (opcode::Send::CODE, "IORING_OP_SEND", "5.6"),
    (opcode::Recv::CODE, "IORING_OP_RECV", "5.6"),
    (opcode::Timeout::CODE, "IORING_OP_TIMEOUT", "5.4"),
    (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL", "5.5"),
    (opcode::MsgRingData::CODE, "IORING_OP_MSG_RING", "5.18"),
    (opcode::SendZc::CODE, "IORING_OP_SEND_ZC", "6.0"),
    (opcode::SendMsgZc::CODE, "IORING_OP_SENDMSG_ZC", "6.1"),
];

/// Checks that io_uring can be set up and supports every operation the engine uses.
pub fn check_io_uring() -> Result<()> {
    // The engine's own ring set-up, flags included.
    drop(crate::io::ring::Ring::new(8)?);
    let ring = IoUring::new(8).map_err(explain_setup_error)?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| Error::KernelTooOld {
        found: kernel_release(),
        needed: "5.6",
        feature: if e.raw_os_error() == Some(libc::EINVAL) { "IORING_REGISTER_PROBE" } else { "io_uring probing" },
    })?;
    for &(code, name, needed) in REQUIRED_OPS {
        if !probe.is_supported(code) {
            return Err(Error::KernelTooOld { found: kernel_release(), needed, feature: name });
        }
    }
    Ok(())
}

/// The running kernel's release string (uname -r).
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain old data filled by uname(2).
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a live, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".into();
    }
    // SAFETY: the kernel NUL-terminates the release field.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) };
    release.to_string_lossy().into_owned()
}

/// Checks that `dir` accepts O_DIRECT opens and an aligned direct write.
pub fn check_direct_io(dir: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(".mirrorlog-direct-io-probe");
    let result = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .and_then(|file| {
            use std::os::unix::fs::FileExt;
            let buf = crate::io::buffer::AlignedBuf::zeroed(crate::constants::BLOCK_SIZE);
            file.write_all_at(&buf, 0)
        });
    let _ = std::fs::remove_file(&path);
    result.map_err(|e| Error::DirectIoUnsupported { path: dir.to_path_buf(), detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_passes_the_checks() {
        check_io_uring().expect("io_uring usable");
        let dir = tempfile::tempdir_in(".").unwrap();
        check_direct_io(dir.path()).expect("O_DIRECT on the build directory");
    }

    #[test]
    fn tmpfs_is_refused_with_the_likely_cause() {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return;
        }
        let dir = tempfile::tempdir_in(shm).unwrap();
        match check_direct_io(dir.path()) {
            Err(e @ Error::DirectIoUnsupported { .. }) => assert!(e.to_string().contains("tmpfs")),
            Ok(()) => {} // newer kernels support O_DIRECT on tmpfs (6.6+); nothing to refuse then
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn setup_errors_name_the_cause() {
        let e = explain_setup_error(std::io::Error::from_raw_os_error(libc::EPERM));
        assert!(e.to_string().contains("io_uring_disabled"));
    }
}

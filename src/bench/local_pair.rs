//! A local principal + mirror pair as child processes of the current executable: what
//! `mirrorlog bench commit` measures and what `mirrorlog quickstart` runs.
//!
//! Layout under the pair's directory: `principal/` and `mirror/` (data directories),
//! `endpoint.key` (the shared endpoint key: 32 random bytes in hex, kept across runs),
//! `principal.log` and `mirror.log` (each child's stderr, appended).
//!
//! Start-up order: the mirror first (`--restoring`, its own `--endpoint`), then the principal
//! (`--partner tcp://MIRROR_ENDPOINT --safety full|off`), which dials the mirror. A pair is ready
//! when both print `mirrorlog: serving …`, answer PING, and `MIRROR STATUS` on the principal shows
//! `state:SYNCHRONIZED` for every database. With [`Safety::None`] only the principal runs, as a
//! standalone server without mirroring flags.
//!
//! Children die with the parent: each gets PR_SET_PDEATHSIG(SIGTERM) before exec. prctl(2) says
//! the "parent" here is the *thread* that created the child, so a pair must be started from a
//! thread that outlives it (the main thread, or the test's thread). Each child runs in its own
//! process group, so a Ctrl-C at the terminal reaches only the parent, which then stops the
//! children in order, by pid.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::client::{Client, Value};
use crate::error::{Error, IoContext, Result};

/// Bytes of random key generated for the endpoint key file.
pub const ENDPOINT_KEY_SIZE: usize = 32;
/// The key file the server accepts must hold at least this many bytes.
pub const ENDPOINT_KEY_SIZE_MIN: usize = 16;
/// Lines of a child's stderr quoted in an error.
const STDERR_TAIL_LINES: usize = 20;
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the pair commits: SAFETY FULL or OFF, or no mirror at all (a standalone server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Safety {
    Full,
    Off,
    None,
}

impl Safety {
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(Safety::Full),
            "off" => Ok(Safety::Off),
            "none" => Ok(Safety::None),
            other => Err(Error::Config(format!("safety must be full, off or none, not {other:?}"))),
        }
    }

    /// The name on the command line and in JSON: `full`, `off`, `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Safety::Full => "full",
            Safety::Off => "off",
            Safety::None => "none",
        }
    }

    /// SQL Server's spelling, for tables: `FULL`, `OFF`, `NONE` (no mirror).
    pub fn label(self) -> &'static str {
        match self {
            Safety::Full => "FULL",
            Safety::Off => "OFF",
            Safety::None => "NONE",
        }
    }

    pub fn mirrored(self) -> bool {
        self != Safety::None
    }
}

#[derive(Debug, Clone)]
pub struct PairConfig {
    /// The `mirrorlog` executable (usually `std::env::current_exe()`).
    pub exe: PathBuf,
    /// Holds both data directories, the key file and the children's logs.
    pub dir: PathBuf,
    pub safety: Safety,
    /// RESP addresses; port 0 = any free port (read back from the server's start-up line).
    pub principal_listen: SocketAddr,
    pub mirror_listen: SocketAddr,
    /// Mirroring endpoints; `None` = a free loopback port picked now.
    pub principal_endpoint: Option<SocketAddr>,
    pub mirror_endpoint: Option<SocketAddr>,
    pub databases: usize,
    /// Pin the principal to this core and the mirror to the next one.
    pub first_core: Option<usize>,
    /// More `serve` arguments, given to both children.
    pub server_args: Vec<String>,
    /// How long start-up may take, up to `state:SYNCHRONIZED`.
    pub ready_timeout: Duration,
    /// Set (e.g. by a signal handler) to give up waiting.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl PairConfig {
    pub fn new(exe: PathBuf, dir: PathBuf, safety: Safety) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            exe,
            dir,
            safety,
            principal_listen: any,
            mirror_listen: any,
            principal_endpoint: None,
            mirror_endpoint: None,
            databases: 1,
            first_core: None,
            server_args: Vec::new(),
            ready_timeout: Duration::from_secs(60),
            cancel: None,
        }
    }
}

/// `MIRROR STATUS` of one database: its `name:value` lines.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MirrorStatus {
    pub fields: BTreeMap<String, String>,
}

impl MirrorStatus {
    pub fn parse(text: &str) -> Self {
        let fields = text
            .split(['\r', '\n'])
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
            .collect();
        Self { fields }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    pub fn get_u64(&self, name: &str) -> Option<u64> {
        self.get(name).and_then(|v| v.parse().ok())
    }

    /// `state`, or `?` when missing.
    pub fn state(&self) -> &str {
        self.get("state").unwrap_or("?")
    }
}

/// One `mirrorlog serve` child.
pub struct ServerChild {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    /// The mirroring endpoint the server reported (when started with a key).
    endpoint: Option<SocketAddr>,
    log_path: PathBuf,
    exited: Option<ExitStatus>,
    /// What it was started with, for `restart`.
    args: Vec<String>,
    core: Option<usize>,
}

impl ServerChild {
    /// Spawns `exe serve ARGS` and waits for its start-up line.
    fn start(
        name: &'static str,
        config: &PairConfig,
        listen: SocketAddr,
        args: Vec<String>,
        core: Option<usize>,
    ) -> Result<Self> {
        let log_path = config.dir.join(format!("{name}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .context(|| format!("open {}", log_path.display()))?;
        let mut command = Command::new(&config.exe);
        command
            .arg("serve")
            .arg("--listen")
            .arg(listen.to_string())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0);
        // SAFETY: getpid(2) has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system
        // calls (prctl, getppid, sched_setaffinity) on stack data; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl: then nobody would ever signal us
                // (prctl(2) suggests this check).
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                if let Some(core) = core {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(core, &mut set);
                    if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child =
            command.spawn().context(|| format!("start {name}: {} serve {}", config.exe.display(), args.join(" ")))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut server =
            Self { name, child, addr: listen, endpoint: None, log_path, exited: None, args: args.clone(), core };
        let wants_endpoint = args.iter().any(|a| a == "--endpoint-key-file");
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || {
                // Forward the start-up line, then keep draining so the child never blocks on a
                // full pipe.
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.starts_with("mirrorlog: serving") || line.starts_with("mirrorlog: mirroring endpoint") {
                        let _ = tx.send(line);
                    }
                }
            })
            .map_err(|e| Error::io("spawn stdout reader thread", e))?;
        let deadline = Instant::now() + config.ready_timeout;
        let line = loop {
            match rx.recv_timeout(POLL_INTERVAL) {
                Ok(line) => break line,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Stdout closes as the child exits: give the exit a moment to be reaped, so
                    // the error says how it ended.
                    let exiting = Instant::now() + Duration::from_secs(2);
                    while Instant::now() < exiting {
                        server.check_running()?;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    return Err(server.failure("closed its stdout before printing `mirrorlog: serving`"));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => server.check_waiting(deadline, config, "its start-up line")?,
            }
        };
        if let Some(addr) = line.rsplit(' ').next().and_then(|a| a.parse::<SocketAddr>().ok()) {
            server.addr = addr;
        } else if listen.port() == 0 {
            return Err(server.failure(&format!("no address in its start-up line {line:?}")));
        }
        if wants_endpoint {
            // The server binds the endpoint itself (port 0 allowed) and prints where: no port is
            // picked and released here for another process to take meanwhile.
            let line = loop {
                match rx.recv_timeout(POLL_INTERVAL) {
                    Ok(line) if line.starts_with("mirrorlog: mirroring endpoint") => break line,
                    Ok(_) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        return Err(server.failure("closed its stdout before printing its endpoint"))
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        server.check_waiting(deadline, config, "its endpoint line")?
                    }
                }
            };
            server.endpoint = line.rsplit(' ').next().and_then(|a| a.parse::<SocketAddr>().ok());
            if server.endpoint.is_none() {
                return Err(server.failure(&format!("no address in its endpoint line {line:?}")));
            }
        }
        loop {
            let pong = self::ping(server.addr);
            if pong {
                break;
            }
            server.check_waiting(deadline, config, "PING")?;
            std::thread::sleep(POLL_INTERVAL);
        }
        Ok(server)
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The RESP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The mirroring endpoint it reported, if started with a key.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    /// SIGKILL by pid (a crash), and reaps it.
    pub fn kill9(&mut self) -> Result<()> {
        if self.exited.is_none() {
            // SIGKILL (Child::kill) on our own unreaped child.
            self.child.kill().context(|| format!("{}: SIGKILL", self.name))?;
            self.exited = Some(self.child.wait().context(|| format!("{}: wait", self.name))?);
        }
        Ok(())
    }

    /// Starts it again after it exited, with the same arguments, on the same RESP address and
    /// mirroring endpoint (its partner and the witness know it there). Its persisted mirroring
    /// settings decide its role.
    pub fn restart(&mut self, config: &PairConfig) -> Result<()> {
        assert!(self.exited.is_some(), "restart of a running {}", self.name);
        let mut args = self.args.clone();
        if let (Some(endpoint), Some(i)) = (self.endpoint, args.iter().position(|a| a == "--endpoint")) {
            args[i + 1] = endpoint.to_string();
        }
        *self = Self::start(self.name, config, self.addr, args, self.core)?;
        Ok(())
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn client(&self) -> Result<Client> {
        Client::connect(self.addr, CLIENT_TIMEOUT).context(|| format!("{}: connect {}", self.name, self.addr))
    }

    /// `MIRROR STATUS` of database `db`, on a fresh connection.
    pub fn mirror_status(&self, db: usize) -> Result<MirrorStatus> {
        let mut client = self.client()?;
        mirror_status(&mut client, db).map_err(|detail| self.failure(&detail))
    }

    /// The last lines of the child's stderr.
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
    }

    fn failure(&self, detail: &str) -> Error {
        Error::ChildProcess {
            name: format!("{} (pid {})", self.name, self.child.id()),
            detail: format!("{detail}\n--- last lines of {} ---\n{}", self.log_path.display(), self.stderr_tail()),
        }
    }

    /// An error if the child has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().context(|| format!("{}: wait", self.name))?;
        }
        match self.exited {
            Some(status) => Err(self.failure(&format!("exited ({status})"))),
            None => Ok(()),
        }
    }

    fn check_waiting(&mut self, deadline: Instant, config: &PairConfig, what: &str) -> Result<()> {
        self.check_running()?;
        if config.cancel.as_ref().is_some_and(|c| c.load(Ordering::SeqCst)) {
            return Err(self.failure(&format!("cancelled while waiting for {what}")));
        }
        if Instant::now() >= deadline {
            return Err(self.failure(&format!("not ready after {:?}: waiting for {what}", config.ready_timeout)));
        }
        Ok(())
    }

    /// SIGTERM by pid, then wait up to `timeout`; SIGKILL after it. Returns the exit status.
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        if let Some(status) = self.child.try_wait().context(|| format!("{}: wait", self.name))? {
            self.exited = Some(status);
            return Ok(status);
        }
        // SAFETY: kill(2) on our own child, which has not been reaped (try_wait said so), so the
        // pid cannot have been reused.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context(|| format!("{}: wait", self.name))? {
                self.exited = Some(status);
                return Ok(status);
            }
            if Instant::now() >= deadline {
                // SIGKILL (Child::kill) on the same unreaped child.
                self.child.kill().context(|| format!("{}: SIGKILL", self.name))?;
                let status = self.child.wait().context(|| format!("{}: wait", self.name))?;
                self.exited = Some(status);
                return Err(self.failure(&format!("did not stop within {timeout:?} of SIGTERM: killed")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// [`ServerChild::stop`], and an error unless the child exited with status 0.
    pub fn stop_cleanly(&mut self, timeout: Duration) -> Result<()> {
        let status = self.stop(timeout)?;
        if !status.success() {
            return Err(self.failure(&format!("exited with {status} after SIGTERM")));
        }
        Ok(())
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(10));
    }
}

/// Whether a server answers PING at `addr`.
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut client) = Client::connect(addr, Duration::from_secs(1)) else { return false };
    matches!(client.command(&[b"PING"]), Ok(Value::Simple(s)) if s == "PONG")
}

/// `SELECT db` then `MIRROR STATUS` on `client`; the error is a description.
pub fn mirror_status(client: &mut Client, db: usize) -> std::result::Result<MirrorStatus, String> {
    let db_text = db.to_string();
    let replies = client
        .pipeline(&[vec![b"SELECT".as_slice(), db_text.as_bytes()], vec![b"MIRROR", b"STATUS"]])
        .map_err(|e| format!("MIRROR STATUS: {e}"))?;
    match &replies[..] {
        [Value::Simple(ok), status] if ok == "OK" => match status {
            Value::Bulk(b) => Ok(MirrorStatus::parse(&String::from_utf8_lossy(b))),
            other => Err(format!("MIRROR STATUS on database {db} answered {other:?}")),
        },
        other => Err(format!("SELECT {db} answered {other:?}")),
    }
}

/// The running pair (or the standalone principal when `safety` is none).
pub struct LocalPair {
    pub safety: Safety,
    pub databases: usize,
    /// Fields drop in declaration order: the principal stops before the mirror.
    pub principal: ServerChild,
    pub mirror: Option<ServerChild>,
    pub principal_endpoint: Option<SocketAddr>,
    pub mirror_endpoint: Option<SocketAddr>,
}

impl LocalPair {
    /// Starts the pair and waits until it is ready (see the module documentation).
    pub fn start(config: &PairConfig) -> Result<Self> {
        assert!(config.databases > 0, "a pair needs at least one database");
        std::fs::create_dir_all(&config.dir).context(|| format!("create {}", config.dir.display()))?;
        let cores = crate::io::shard::available_cores();
        let core = |offset: usize| config.first_core.map(|c| (c + offset) % cores);
        let common = |data: &str| -> Vec<String> {
            let mut args = vec![
                "--data".to_string(),
                config.dir.join(data).display().to_string(),
                "--databases".to_string(),
                config.databases.to_string(),
            ];
            args.extend(config.server_args.iter().cloned());
            args
        };
        if !config.safety.mirrored() {
            let principal =
                ServerChild::start("principal", config, config.principal_listen, common("principal"), core(0))?;
            return Ok(Self {
                safety: config.safety,
                databases: config.databases,
                principal,
                mirror: None,
                principal_endpoint: None,
                mirror_endpoint: None,
            });
        }
        let key_file = endpoint_key_file(&config.dir)?;
        let any_port: SocketAddr = "127.0.0.1:0".parse().expect("a valid address");
        let principal_endpoint = config.principal_endpoint.unwrap_or(any_port);
        let mirror_endpoint = config.mirror_endpoint.unwrap_or(any_port);
        let endpoint_args = |endpoint: SocketAddr| {
            vec![
                "--endpoint".to_string(),
                endpoint.to_string(),
                "--endpoint-key-file".to_string(),
                key_file.display().to_string(),
            ]
        };
        let mut mirror_args = common("mirror");
        mirror_args.extend(endpoint_args(mirror_endpoint));
        mirror_args.push("--restoring".into());
        let mirror = ServerChild::start("mirror", config, config.mirror_listen, mirror_args, core(1))?;
        let mirror_endpoint = mirror.endpoint.expect("started with a key");
        let mut principal_args = common("principal");
        principal_args.extend(endpoint_args(principal_endpoint));
        principal_args.extend([
            "--partner".to_string(),
            format!("tcp://{mirror_endpoint}"),
            "--safety".to_string(),
            config.safety.as_str().to_string(),
        ]);
        let principal = ServerChild::start("principal", config, config.principal_listen, principal_args, core(0))?;
        let principal_endpoint = principal.endpoint.expect("started with a key");
        let mut pair = Self {
            safety: config.safety,
            databases: config.databases,
            principal,
            mirror: Some(mirror),
            principal_endpoint: Some(principal_endpoint),
            mirror_endpoint: Some(mirror_endpoint),
        };
        pair.wait_synchronized(config)?;
        Ok(pair)
    }

    /// Polls `MIRROR STATUS` on the principal until every database is SYNCHRONIZED.
    fn wait_synchronized(&mut self, config: &PairConfig) -> Result<()> {
        let deadline = Instant::now() + config.ready_timeout;
        let mut client = self.principal.client()?;
        for db in 0..self.databases {
            loop {
                let status = mirror_status(&mut client, db).map_err(|d| self.principal.failure(&d))?;
                if status.state() == "SYNCHRONIZED" {
                    break;
                }
                let waiting = format!("database {db} to be SYNCHRONIZED (last MIRROR STATUS: {:?})", status.fields);
                if let Err(e) = self.principal.check_waiting(deadline, config, &waiting) {
                    let mirror = self.mirror.as_mut().expect("a mirrored pair has a mirror");
                    let mirror_state = match mirror.check_running() {
                        Ok(()) => {
                            format!("running; last lines of {}:\n{}", mirror.log_path.display(), mirror.stderr_tail())
                        }
                        Err(e) => e.to_string(),
                    };
                    return Err(Error::ChildProcess {
                        name: "pair".into(),
                        detail: format!("{e}\n--- mirror: {mirror_state}"),
                    });
                }
                std::thread::sleep(POLL_INTERVAL);
            }
        }
        Ok(())
    }

    /// `MIRROR STATUS` of database `db` on the principal and (if any) on the mirror.
    pub fn statuses(&self, db: usize) -> Result<(MirrorStatus, Option<MirrorStatus>)> {
        let principal = self.principal.mirror_status(db)?;
        let mirror = self.mirror.as_ref().map(|m| m.mirror_status(db)).transpose()?;
        Ok((principal, mirror))
    }

    /// Stops the principal, then the mirror (SIGTERM by pid, SIGKILL after `timeout`); an error
    /// if either did not exit cleanly.
    pub fn stop(mut self, timeout: Duration) -> Result<()> {
        let principal = self.principal.stop_cleanly(timeout);
        let mirror = self.mirror.as_mut().map_or(Ok(()), |m| m.stop_cleanly(timeout));
        principal.and(mirror)
    }
}

/// Starts `EXE witness` on `addr` with data in `dir/witness`, the endpoint key `key` and `args`
/// (e.g. `--partner-timeout`), its stderr appended to `dir/witness.log`; it dies with this
/// process.
pub fn start_witness(exe: &Path, dir: &Path, key: &Path, addr: SocketAddr, args: &[String]) -> Result<Child> {
    let log_path = dir.join("witness.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .context(|| format!("open {}", log_path.display()))?;
    let mut command = Command::new(exe);
    command
        .args(["witness", "--endpoint", &addr.to_string(), "--data"])
        .arg(dir.join("witness"))
        .arg("--endpoint-key-file")
        .arg(key)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0);
    // SAFETY: the closure only calls prctl(2), async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().context(|| format!("start the witness: {} witness", exe.display()))
}

/// `dir/endpoint.key`: kept if it already holds at least [`ENDPOINT_KEY_SIZE_MIN`] bytes,
/// otherwise written with [`ENDPOINT_KEY_SIZE`] random bytes in hex, mode 0600.
pub fn endpoint_key_file(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("endpoint.key");
    if let Ok(existing) = std::fs::read(&path) {
        if existing.trim_ascii().len() >= ENDPOINT_KEY_SIZE_MIN {
            return Ok(path);
        }
    }
    let mut key = [0u8; ENDPOINT_KEY_SIZE];
    let mut filled = 0;
    while filled < key.len() {
        // SAFETY: getrandom(2) writes at most `len - filled` bytes into the array's tail.
        let n = unsafe { libc::getrandom(key[filled..].as_mut_ptr().cast(), key.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::io("getrandom", e));
        }
        filled += n as usize;
    }
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .context(|| format!("create {}", path.display()))?;
    file.write_all(format!("{hex}\n").as_bytes()).context(|| format!("write {}", path.display()))?;
    file.sync_all().context(|| format!("fsync {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_status_lines_parse() {
        let s = MirrorStatus::parse("role:principal\r\nstate:SYNCHRONIZED\r\nlsn_hardened:4096\r\nsafety:FULL\r\n");
        assert_eq!(s.get("role"), Some("principal"));
        assert_eq!(s.state(), "SYNCHRONIZED");
        assert_eq!(s.get_u64("lsn_hardened"), Some(4096));
        assert_eq!(s.get_u64("redo_queue_bytes"), None);
        assert_eq!(MirrorStatus::parse("").state(), "?");
    }

    #[test]
    fn safety_names_round_trip() {
        for s in [Safety::Full, Safety::Off, Safety::None] {
            assert_eq!(Safety::parse(s.as_str()).unwrap(), s);
            assert_eq!(Safety::parse(s.label()).unwrap(), s);
        }
        assert!(Safety::parse("async").is_err());
    }

    #[test]
    fn endpoint_key_is_generated_once_and_kept() {
        let dir = tempfile::tempdir_in(".").unwrap();
        let path = endpoint_key_file(dir.path()).unwrap();
        let first = std::fs::read_to_string(&path).unwrap();
        assert_eq!(first.trim().len(), 2 * ENDPOINT_KEY_SIZE);
        assert!(first.trim().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(first.trim(), "0".repeat(2 * ENDPOINT_KEY_SIZE));
        assert_eq!(std::fs::read_to_string(endpoint_key_file(dir.path()).unwrap()).unwrap(), first);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

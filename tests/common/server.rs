//! Starting and stopping `mirrorlog serve` processes for tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mirrorlog::client::{Client, Value};

pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub data: PathBuf,
    /// The mirroring endpoint, when the server was started with a key.
    pub endpoint: Option<SocketAddr>,
}

fn last_word_addr(line: &str) -> SocketAddr {
    line.trim().rsplit(' ').next().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("no address in {line:?}"))
}

impl ServerProcess {
    pub fn start(data: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--databases",
                "2",
                "--cache-size",
                "64MiB",
                "--segment-size",
                "4MiB",
                "--data",
            ])
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mirrorlog serve");
        let stdout = child.stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("server start-up line");
        let addr = last_word_addr(&line);
        let endpoint = if extra.contains(&"--endpoint-key-file") {
            let mut line = String::new();
            reader.read_line(&mut line).expect("endpoint line");
            Some(last_word_addr(&line))
        } else {
            None
        };
        // Keep reading (and discarding) so the server never writes into a closed pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        Self { child, addr, data: data.to_path_buf(), endpoint }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr, Duration::from_secs(20)).expect("connect")
    }

    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// SIGTERM, then wait; returns whether it exited successfully.
    pub fn stop(mut self) -> bool {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let ok = self.child.wait().map(|s| s.success()).unwrap_or(false);
        std::mem::forget(self);
        ok
    }

    pub fn kill9(mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        std::mem::forget(self);
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

pub fn bulk(v: &Value) -> String {
    String::from_utf8_lossy(v.as_bytes().unwrap_or(b"<nil>")).into_owned()
}

/// Runs a tool that CI installs; a missing tool fails the test with the install hint.
pub fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(found, "{name} is not installed (apt-get install redis-tools; .ci/run installs it)");
    Command::new(name)
}

/// Runs `mirrorlog inspect pages DIR`: (exit code, printed report).
pub fn inspect_pages(dir: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(["inspect", "pages"])
        .arg(dir)
        .output()
        .expect("run inspect pages");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

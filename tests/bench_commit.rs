//! `mirrorlog bench commit`, `mirrorlog quickstart` and the local pair they run, with real
//! processes.
//!
//! The SAFETY FULL/OFF tests run a real principal and a real mirror (separate processes) and
//! check the rows and that the pair was SYNCHRONIZED.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::scratch;
use mirrorlog::bench::local_pair::{LocalPair, PairConfig, Safety};
use mirrorlog::client::Value;

const EXE: &str = env!("CARGO_BIN_EXE_mirrorlog");

const ROW_KEYS: &[&str] = &[
    "safety",
    "clients",
    "tps",
    "p50_us",
    "p99_us",
    "p999_us",
    "floor_local_p50_us",
    "floor_pair_p50_us",
    "duration_s",
    "commits",
    "redo_queue_bytes",
];

fn bench_commit(dir: &Path, safety: &str, clients: &str, duration: &str) -> (bool, Vec<serde_json::Value>, String) {
    let out = Command::new(EXE)
        .args(["bench", "commit", "--safety", safety, "--clients", clients, "--duration", duration])
        .args(["--json", "--floor-ops", "200", "--dir"])
        .arg(dir)
        .output()
        .expect("run bench commit");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let rows = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\nstdout:\n{stdout}")))
        .collect();
    (out.status.success(), rows, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn num(row: &serde_json::Value, key: &str) -> f64 {
    row[key].as_f64().unwrap_or_else(|| panic!("{key} is not a number in {row}"))
}

fn check_row(row: &serde_json::Value, safety: &str, clients: u64) {
    for key in ROW_KEYS {
        assert!(row.get(key).is_some(), "{key} missing from {row}");
    }
    assert_eq!(row["safety"], safety);
    assert_eq!(row["clients"], clients);
    let (tps, commits, duration) = (num(row, "tps"), num(row, "commits"), num(row, "duration_s"));
    assert!(commits > 0.0 && tps > 0.0, "{row}");
    // Throughput is commits over the measured window, and the window is about what was asked.
    assert!((tps - commits / duration).abs() <= 1.0 + tps * 0.01, "{row}");
    assert!((0.9..5.0).contains(&duration), "{row}");
    let (p50, p99, p999) = (num(row, "p50_us"), num(row, "p99_us"), num(row, "p999_us"));
    assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "{row}");
    assert!(num(row, "floor_local_p50_us") > 0.0 && num(row, "floor_pair_p50_us") > 0.0, "{row}");
    // Every commit is durable: it cannot be much faster than one durable 4 KiB write.
    assert!(p50 >= num(row, "floor_local_p50_us") * 0.3, "commit p50 far below the floor: {row}");
}

#[test]
fn bench_commit_standalone_prints_one_json_row_per_client_count() {
    let dir = scratch();
    let (ok, rows, stderr) = bench_commit(dir.path(), "none", "1,2", "1");
    assert!(ok, "bench commit failed: {stderr}");
    assert_eq!(rows.len(), 2, "{rows:?}");
    check_row(&rows[0], "none", 1);
    check_row(&rows[1], "none", 2);
    assert!(rows[0]["redo_queue_bytes"].is_null() && rows[0]["state"].is_null(), "no mirror: {}", rows[0]);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "the work directory is removed: {left:?}");
}

#[test]
fn bench_commit_mirrored_rows() {
    let dir = scratch();
    let (ok, rows, stderr) = bench_commit(dir.path(), "full,off", "1", "1");
    assert!(ok, "bench commit failed: {stderr}");
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (row, safety) in rows.iter().zip(["full", "off"]) {
        check_row(row, safety, 1);
        assert!(row["state"].is_string() && row["redo_queue_bytes"].is_u64(), "{row}");
    }
}

#[test]
fn local_pair_standalone_serves_and_stops_cleanly() {
    let dir = scratch();
    let pair = LocalPair::start(&PairConfig::new(EXE.into(), dir.path().join("pair"), Safety::None)).unwrap();
    assert!(pair.mirror.is_none());
    let mut client = pair.principal.client().unwrap();
    assert_eq!(client.command(&[b"SET", b"k", b"v"]).unwrap(), Value::Simple("OK".into()));
    assert_eq!(client.command(&[b"GET", b"k"]).unwrap(), Value::Bulk(b"v".to_vec()));
    let pid = pair.principal.pid();
    pair.stop(Duration::from_secs(20)).unwrap();
    assert!(!alive(pid), "pid {pid} is gone");
    assert!(dir.path().join("pair/principal").is_dir() && dir.path().join("pair/principal.log").is_file());
}

#[test]
fn local_pair_start_failure_quotes_the_childs_stderr() {
    let dir = scratch();
    let mut config = PairConfig::new(EXE.into(), dir.path().join("pair"), Safety::None);
    config.server_args = vec!["--checkpoint-interval".into(), "0".into()];
    let error = LocalPair::start(&config).err().expect("a server with a bad flag does not start").to_string();
    assert!(error.contains("principal (pid") && error.contains("exited"), "{error}");
    assert!(error.contains("--checkpoint-interval must be positive"), "{error}");
}

/// Children of a `bench commit` that is SIGKILLed die with it (PR_SET_PDEATHSIG).
#[test]
fn servers_die_with_the_bench() {
    let dir = scratch();
    let mut bench = Command::new(EXE)
        .args(["bench", "commit", "--safety", "none", "--clients", "1", "--duration", "60", "--floor-ops", "100"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let children = wait_for(Duration::from_secs(30), || {
        let c = children_of(bench.id());
        (!c.is_empty()).then_some(c)
    })
    .expect("bench commit starts a server");
    bench.kill().unwrap();
    bench.wait().unwrap();
    for pid in children {
        wait_for(Duration::from_secs(10), || (!alive(pid)).then_some(()))
            .unwrap_or_else(|| panic!("{pid} outlived the bench"));
    }
}

#[test]
fn quickstart_runs_a_mirrored_pair_until_sigint() {
    assert!(quickstart_until_sigint(None), "quickstart must come up");
}

/// Runs quickstart, sends SIGINT after two status lines; returns whether the pair came up.
fn quickstart_until_sigint(server_exe: Option<&Path>) -> bool {
    let dir = scratch();
    // Quickstart serves on PORT and PORT + 1, its endpoints on E and E + 1, its witness on E + 2.
    let port = free_ports(2);
    let endpoint_port = free_ports(3);
    let mut quickstart = Command::new(EXE)
        .args(["quickstart", "--port", &port.to_string(), "--endpoint-port", &endpoint_port.to_string(), "--dir"])
        .arg(dir.path().join("qs"))
        .args(server_exe.map(|exe| vec!["--server-exe".into(), exe.as_os_str().to_owned()]).unwrap_or_default())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(quickstart.stdout.take().unwrap());
    let mut seen = Vec::new();
    let mut status_lines = 0;
    for line in stdout.lines() {
        let line = line.unwrap();
        if line.contains(" | principal hardened ") {
            status_lines += 1;
            if status_lines == 2 {
                // SAFETY: kill(2) on our own unreaped child.
                unsafe { libc::kill(quickstart.id() as i32, libc::SIGINT) };
            }
        }
        seen.push(line);
    }
    let status = quickstart.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut quickstart.stderr.take().unwrap(), &mut stderr).unwrap();
    let key = std::fs::read_to_string(dir.path().join("qs/endpoint.key")).unwrap();
    assert_eq!(key.trim().len(), 64, "a 32-byte hex key is kept in --dir");
    if status_lines >= 2 {
        assert!(status.success(), "quickstart exits 0 after Ctrl-C: {status}\n{stderr}");
        assert!(seen.iter().any(|l| l.contains(&format!("redis-cli -p {port} set hello world"))), "{seen:?}");
        assert!(seen.iter().any(|l| l.contains("SYNCHRONIZED")), "{seen:?}");
        assert!(seen.last().unwrap().contains("both stopped"), "{seen:?}");
        for p in [port, port + 1] {
            assert!(std::net::TcpStream::connect(("127.0.0.1", p)).is_err(), "port {p} still served after Ctrl-C");
        }
    } else {
        assert!(!status.success());
        assert!(stderr.contains("mirror (pid") && stderr.contains("last lines of"), "{stderr}");
        eprintln!("quickstart did not come up; its stderr:\n{stderr}");
    }
    status_lines >= 2
}

/// A port that is free with the `n - 1` after it (checked by binding them all, then releasing
/// them).
fn free_ports(n: u16) -> u16 {
    loop {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        let rest: Vec<_> = (1..n)
            .map_while(|i| port.checked_add(i))
            .map_while(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if rest.len() + 1 == n as usize {
            return port;
        }
    }
}

fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Child pids of `pid`, from /proc/PID/task/*/children.
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return children };
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.extend(text.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    children
}

/// Running (not gone and not a zombie waiting for a reaper).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the command name, which is in parentheses (proc(5)).
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X'))
}

#[test]
fn local_pair_full_passes_the_mirroring_flags_and_waits_for_synchronized() {
    let dir = scratch();
    let mut config = PairConfig::new(EXE.into(), dir.path().join("pair"), Safety::Full);
    config.databases = 2;
    let pair = LocalPair::start(&config).unwrap();
    let (principal, mirror) = pair.statuses(1).unwrap();
    let mirror = mirror.expect("a mirror status");
    assert_eq!(
        (principal.get("role"), principal.state(), principal.get("safety")),
        (Some("principal"), "SYNCHRONIZED", Some("FULL"))
    );
    assert_eq!(mirror.get("role"), Some("mirror"));
    // The command lines the children really run with.
    let cmdline = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap().replace('\0', "\n");
    let pids = [("principal", pair.principal.pid()), ("mirror", pair.mirror.as_ref().unwrap().pid())];
    let args = |who: &str| cmdline(pids.iter().find(|(w, _)| *w == who).unwrap().1);
    let key = dir.path().join("pair/endpoint.key").display().to_string();
    let mirror_endpoint = pair.mirror_endpoint.unwrap().to_string();
    let principal_endpoint = pair.principal_endpoint.unwrap().to_string();
    assert_ne!(mirror_endpoint, principal_endpoint);
    let (p, m) = (args("principal"), args("mirror"));
    for (text, want) in [
        // Each server binds its endpoint itself (port 0) and reports it: no port is picked and
        // released for another process to take meanwhile.
        (&m, "--endpoint\n127.0.0.1:0\n".to_string()),
        (&m, format!("--endpoint-key-file\n{key}\n")),
        (&m, "--restoring\n".to_string()),
        (&p, "--endpoint\n127.0.0.1:0\n".to_string()),
        (&p, format!("--endpoint-key-file\n{key}\n")),
        (&p, format!("--partner\ntcp://{mirror_endpoint}\n--safety\nfull\n")),
        (&p, "--databases\n2\n".to_string()),
    ] {
        assert!(text.contains(&want), "{want:?} not in\n{text}");
    }
    assert!(!p.contains("--restoring") && !m.contains("--partner"));
    pair.stop(Duration::from_secs(10)).unwrap();
}

#[test]
fn bench_commit_reports_the_mirrors_redo_queue_after_each_mirrored_row() {
    use mirrorlog::bench::commit::{run, CommitBenchConfig, ModeResult};
    let dir = scratch();
    let config = CommitBenchConfig {
        exe: EXE.into(),
        safeties: vec![Safety::Full, Safety::Off],
        clients: vec![1, 2],
        duration: Duration::from_millis(300),
        value_size: 100,
        dir: dir.path().to_path_buf(),
        floor_ops: 40,
        first_core: None,
    };
    let mut reported = 0;
    let results = run(&config, |_| reported += 1).unwrap();
    assert_eq!(reported, 2);
    for (result, safety) in results.iter().zip(["full", "off"]) {
        let ModeResult::Rows(rows) = result else { panic!("{result:?}") };
        assert_eq!(rows.iter().map(|r| r.clients).collect::<Vec<_>>(), [1, 2]);
        for row in rows {
            assert!(row.redo_queue_bytes().is_some());
            let json: serde_json::Value = serde_json::from_str(&row.to_json()).unwrap();
            check_row_keys(&json);
            assert_eq!(json["safety"], safety);
            assert_eq!(json["state"], "SYNCHRONIZED");
            // The status was read after the row's commits: each one logged more than a byte.
            assert!(json["lsn_hardened"].as_u64().unwrap() >= row.commits, "{json}");
        }
    }
}

fn check_row_keys(row: &serde_json::Value) {
    for key in ROW_KEYS {
        assert!(row.get(key).is_some(), "{key} missing from {row}");
    }
}

/// `mirrorlog bench failover`: kills the principal twice (each server once), with a witness; each
/// run reports its failover time, the writes acknowledged before the kill and that none of them
/// is missing on the new principal. (No timing is asserted: the machine is noisy.)
#[test]
fn bench_failover_kills_each_server_once_and_loses_no_acknowledged_write() {
    let dir = scratch();
    let out = Command::new(EXE)
        .args(["bench", "failover", "--runs", "2", "--json", "--dir"])
        .arg(dir.path().join("failover"))
        .output()
        .expect("run bench failover");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "two runs and a summary: {stdout}");
    for run in &lines[..2] {
        assert!(run["failover_ms"].as_f64().unwrap() > 0.0, "{run}");
        assert!(run["writes_before"].as_u64().unwrap() > 0, "the principal was under load: {run}");
        assert_eq!(run["writes_lost"].as_u64(), Some(0), "{run}");
    }
    let summary = &lines[2];
    assert_eq!(summary["runs"].as_u64(), Some(2));
    assert!(summary["failover_max_ms"].as_f64().unwrap() >= summary["failover_median_ms"].as_f64().unwrap());
}

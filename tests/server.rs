//! The RESP server driven by real Redis tools and clients: redis-cli, redis-benchmark, redis-py.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::scratch;
use common::server::{bulk, tool, ServerProcess};
use mirrorlog::client::Value;

fn cli(server: &ServerProcess, args: &[&str]) -> String {
    let out = tool("redis-cli").args(["-p", &server.port()]).args(args).output().unwrap();
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

#[test]
fn redis_cli_commands() {
    let dir = scratch();
    let server = ServerProcess::start(dir.path(), &[]);
    let cases: &[(&[&str], &str)] = &[
        (&["PING"], "PONG"),
        (&["PING", "hi"], "hi"),
        (&["ECHO", "hello world"], "hello world"),
        (&["SET", "k", "v"], "OK"),
        (&["GET", "k"], "v"),
        (&["GET", "missing"], ""),
        (&["SET", "k", "w", "NX"], ""),
        (&["SET", "k", "w", "XX", "GET"], "v"),
        (&["GETSET", "k", "x"], "w"),
        (&["APPEND", "k", "yz"], "3"),
        (&["STRLEN", "k"], "3"),
        (&["SET", "n", "41"], "OK"),
        (&["INCR", "n"], "42"),
        (&["INCRBY", "n", "-2"], "40"),
        (&["DECR", "n"], "39"),
        (&["DECRBY", "n", "9"], "30"),
        (&["INCR", "k"], "ERR value is not an integer or out of range"),
        (&["SET", "big", "9223372036854775807"], "OK"),
        (&["INCR", "big"], "ERR increment or decrement would overflow"),
        (&["MSET", "a", "1", "b", "2"], "OK"),
        (&["MGET", "a", "b", "nope"], "1\n2"),
        (&["EXISTS", "a", "b", "nope"], "2"),
        (&["DEL", "a", "nope"], "1"),
        (&["SET", "t", "v", "EX", "100"], "OK"),
        (&["TTL", "t"], "100"),
        (&["PERSIST", "t"], "1"),
        (&["TTL", "t"], "-1"),
        (&["EXPIRE", "t", "50"], "1"),
        (&["TTL", "missing"], "-2"),
        (&["SET", "k", "v", "EX", "0"], "ERR invalid expire time in 'set' command"),
        (&["SET", "k", "v", "NX", "XX"], "ERR syntax error"),
        (&["GET"], "ERR wrong number of arguments for 'get' command"),
        (&["NOSUCH", "a"], "ERR unknown command 'NOSUCH', with args beginning with: 'a'"),
        (&["SELECT", "1"], "OK"),
        (&["SELECT", "2"], "ERR DB index is out of range"),
        (&["CLIENT", "SETNAME", "tester"], "OK"),
        (&["COMMAND", "COUNT"], "35"),
    ];
    for (args, expected) in cases {
        assert_eq!(cli(&server, args), *expected, "redis-cli {args:?}");
    }
    assert_eq!(cli(&server, &["DBSIZE"]), "5");
    let keys = cli(&server, &["KEYS", "*"]);
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort();
    assert_eq!(keys, vec!["b", "big", "k", "n", "t"]);
    // Databases are separate.
    assert_eq!(cli(&server, &["-n", "1", "SET", "only1", "x"]), "OK");
    assert_eq!(cli(&server, &["-n", "1", "DBSIZE"]), "1");
    assert_eq!(cli(&server, &["-n", "0", "GET", "only1"]), "");
    assert_eq!(cli(&server, &["-n", "1", "FLUSHDB"]), "OK");
    assert_eq!(cli(&server, &["-n", "1", "DBSIZE"]), "0");
    let info = cli(&server, &["INFO"]);
    for section in ["# Server", "# Clients", "# Persistence", "# Mirroring", "# Keyspace", "redis_version:"] {
        assert!(info.contains(section), "INFO lacks {section}: {info}");
    }
    assert_eq!(cli(&server, &["CONFIG", "GET", "appendonly"]), "appendonly\nno");
    let hello = cli(&server, &["-3", "HELLO", "3"]);
    assert!(hello.contains("proto") && hello.contains('3'), "{hello}");
    assert!(server.stop(), "SIGTERM stops the server cleanly");
}

#[test]
fn redis_benchmark_runs_against_it() {
    let dir = scratch();
    let server = ServerProcess::start(dir.path(), &[]);
    let out = tool("redis-benchmark")
        .args(["-p", &server.port(), "-t", "set,get", "-n", "3000", "-c", "8", "-d", "100", "-r", "1000", "-q"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    assert!(out.status.success(), "{text}");
    assert!(text.lines().any(|l| l.starts_with("SET:") && l.contains("requests per second")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("GET:") && l.contains("requests per second")), "{text}");
    let size: i64 = cli(&server, &["DBSIZE"]).parse().unwrap();
    assert!(size > 100, "redis-benchmark's keys are stored ({size})");
    assert!(server.stop());
}

#[test]
fn redis_py_client() {
    let dir = scratch();
    let server = ServerProcess::start(dir.path(), &[]);
    let script = r#"
import sys, redis
port = int(sys.argv[1])
for proto in (2, 3):
    r = redis.Redis(host="127.0.0.1", port=port, protocol=proto)
    assert r.ping()
    r.set("py:k", "v")
    assert r.get("py:k") == b"v"
    assert r.incr("py:n") >= 1
    p = r.pipeline(transaction=True)
    p.set("py:a", 1).incr("py:a").get("py:a")
    assert p.execute() == [True, 2, b"2"], "transaction"
    p = r.pipeline(transaction=False)
    for i in range(200):
        p.set(f"py:p{i}", i)
    assert all(p.execute())
    assert sorted(r.scan_iter(match="py:p1*", count=7)) == sorted(f"py:p{i}".encode() for i in range(200) if str(i).startswith("1"))
    assert r.expire("py:k", 100) and 0 < r.ttl("py:k") <= 100
    assert r.mget("py:a", "py:none") == [b"2", None]
    assert r.delete("py:a", "py:none") == 1
    assert r.dbsize() >= 200
    r.flushdb()
print("redis-py ok")
"#;
    let out = std::process::Command::new("python3").arg("-c").arg(script).arg(server.port()).output().unwrap();
    assert!(
        out.status.success(),
        "redis-py failed (pip install redis; .ci/run installs it):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(server.stop());
}

fn raw_exchange(server: &ServerProcess, bytes: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let closed = s.read_to_end(&mut out).is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[test]
fn bad_input_gets_an_error_and_only_that_connection_closes() {
    let dir = scratch();
    let server = ServerProcess::start(dir.path(), &["--maxclients", "3"]);
    let mut healthy = server.client();
    assert_eq!(healthy.command(&[b"SET", b"x", b"1"]).unwrap(), Value::Simple("OK".into()));
    for (input, error) in [
        (&b"*x\r\n"[..], "-ERR Protocol error: invalid multibulk length"),
        (b"*1\r\n:5\r\n", "-ERR Protocol error: expected '$', got ':'"),
        (b"*1\r\n$999999999999\r\n", "-ERR Protocol error: invalid bulk length"),
        (b"*1\r\n$99999999\r\n", "-ERR Protocol error: invalid bulk length"),
        (b"*2\r\n$3\r\nGET\r\n$1\r\nab\r\n", "-ERR Protocol error: bulk string not terminated by CRLF"),
        (b"SET a \"unbalanced\r\n", "-ERR Protocol error: unbalanced quotes in request"),
    ] {
        let (reply, closed) = raw_exchange(&server, input);
        assert!(reply.starts_with(error), "{:?} -> {reply:?}", String::from_utf8_lossy(input));
        assert!(closed, "the connection is closed after a protocol error");
    }
    // Inline commands work too.
    let (reply, _) = raw_exchange(&server, b"PING\r\nQUIT\r\n");
    assert_eq!(reply, "+PONG\r\n+OK\r\n");
    // The other client was never disturbed.
    assert_eq!(healthy.command(&[b"GET", b"x"]).unwrap(), Value::Bulk(b"1".to_vec()));
    // Too many clients: refused with an error.
    let _c2 = server.client();
    let _c3 = server.client();
    let mut c4 = server.client();
    match c4.read_value() {
        Ok(Value::Error(e)) => assert_eq!(e, "ERR max number of clients reached"),
        other => panic!("{other:?}"),
    }
    assert_eq!(healthy.command(&[b"PING"]).unwrap(), Value::Simple("PONG".into()));
    assert!(server.stop());
}

#[test]
fn requirepass_demands_auth() {
    let dir = scratch();
    let server = ServerProcess::start(dir.path(), &["--requirepass", "s3cret"]);
    let mut c = server.client();
    assert_eq!(c.command(&[b"GET", b"k"]).unwrap(), Value::Error("NOAUTH Authentication required.".into()));
    assert_eq!(
        c.command(&[b"AUTH", b"wrong"]).unwrap(),
        Value::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
    );
    assert_eq!(c.command(&[b"AUTH", b"s3cret"]).unwrap(), Value::Simple("OK".into()));
    assert_eq!(c.command(&[b"SET", b"k", b"v"]).unwrap(), Value::Simple("OK".into()));
    assert_eq!(cli(&server, &["-a", "s3cret", "--no-auth-warning", "GET", "k"]), "v");
    assert!(server.stop());
}

#[test]
fn pipelines_multi_exec_and_restart() {
    let dir = scratch();
    let server = ServerProcess::start(dir.path(), &[]);
    let mut c = server.client();
    let keys: Vec<String> = (0..1000).map(|i| format!("p{i}")).collect();
    let cmds: Vec<Vec<&[u8]>> = keys.iter().map(|k| vec![&b"SET"[..], k.as_bytes(), k.as_bytes()]).collect();
    assert!(c.pipeline(&cmds).unwrap().iter().all(|v| *v == Value::Simple("OK".into())));
    let gets: Vec<Vec<&[u8]>> = keys.iter().map(|k| vec![&b"GET"[..], k.as_bytes()]).collect();
    let replies = c.pipeline(&gets).unwrap();
    assert!(replies.iter().zip(&keys).all(|(v, k)| bulk(v) == *k), "pipelined replies in order");
    let tx: Vec<Vec<&[u8]>> = vec![
        vec![b"MULTI"],
        vec![b"SET", b"t", b"1"],
        vec![b"INCR", b"t"],
        vec![b"INCR", b"p1"],
        vec![b"GET", b"t"],
        vec![b"EXEC"],
    ];
    let replies = c.pipeline(&tx).unwrap();
    assert_eq!(replies[1], Value::Simple("QUEUED".into()));
    match &replies[5] {
        Value::Array(items) => {
            assert_eq!(items[0], Value::Simple("OK".into()));
            assert_eq!(items[1], Value::Integer(2));
            assert!(matches!(items[2], Value::Error(_)), "an error inside EXEC does not stop the rest");
            assert_eq!(items[3], Value::Bulk(b"2".to_vec()));
        }
        other => panic!("{other:?}"),
    }
    let aborted = c.pipeline(&[vec![b"MULTI"], vec![b"NOSUCH"], vec![b"EXEC"]]).unwrap();
    assert!(matches!(&aborted[2], Value::Error(e) if e.starts_with("EXECABORT")));
    let big = vec![b'z'; 3 * 1024 * 1024];
    assert_eq!(c.command(&[b"SET", b"big", &big]).unwrap(), Value::Simple("OK".into()));
    assert!(server.stop());
    let server = ServerProcess::start(dir.path(), &[]);
    let mut c = server.client();
    assert_eq!(c.command(&[b"GET", b"p999"]).unwrap(), Value::Bulk(b"p999".to_vec()));
    assert_eq!(c.command(&[b"GET", b"t"]).unwrap(), Value::Bulk(b"2".to_vec()));
    assert_eq!(c.command(&[b"STRLEN", b"big"]).unwrap(), Value::Integer(big.len() as i64));
    assert!(server.stop());
    let (code, text) = common::server::inspect_pages(dir.path());
    assert!(code == Some(0), "{text}");
    assert!(text.contains("0 bad"), "{text}");
}

/// A byte flipped in a data page on disk: every read either returns the right value or fails with
/// a clear error — never wrong data.
#[test]
fn a_corrupt_page_is_reported_never_served() {
    let dir = scratch();
    let server = ServerProcess::start(dir.path(), &[]);
    let mut c = server.client();
    let keys: Vec<String> = (0..400).map(|i| format!("key{i:04}")).collect();
    let cmds: Vec<Vec<&[u8]>> = keys.iter().map(|k| vec![&b"SET"[..], k.as_bytes(), k.as_bytes()]).collect();
    c.pipeline(&cmds).unwrap();
    drop(c);
    assert!(server.stop(), "a clean stop checkpoints: the pages are on disk");
    // Flip a byte in the middle of every leaf-bearing page of db0 (pages 1.. hold the tree).
    let data = dir.path().join("db0").join("data.pages");
    let bytes = std::fs::read(&data).unwrap();
    let pages = bytes.len() / 4096;
    let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    use std::os::unix::fs::FileExt;
    for page in 1..pages {
        let at = page * 4096 + 2048;
        if bytes[page * 4096..(page + 1) * 4096].iter().any(|&b| b != 0) {
            f.write_all_at(&[bytes[at] ^ 0x01], at as u64).unwrap();
        }
    }
    drop(f);
    let server = ServerProcess::start(dir.path(), &[]);
    let mut c = server.client();
    let mut errors = 0;
    for k in &keys {
        match c.command(&[b"GET", k.as_bytes()]).unwrap() {
            Value::Bulk(v) => assert_eq!(v, k.as_bytes(), "a wrong value was served for {k}"),
            Value::Error(e) => {
                assert!(e.contains("checksum mismatch"), "unclear error: {e}");
                errors += 1;
            }
            other => panic!("{k}: {other:?}"),
        }
    }
    assert!(errors > 0, "the corruption was detected");
    let (code, text) = common::server::inspect_pages(dir.path());
    assert_eq!(code, Some(2), "inspect pages reports the bad pages: {text}");
    drop(server);
}

/// Under a sustained write load, checkpoints still run (incrementally, while commands go on) and
/// release old log segments, so the log does not grow without bound.
#[test]
fn checkpoints_run_under_sustained_load_and_release_the_log() {
    let dir = scratch();
    let server = ServerProcess::start(dir.path(), &["--segment-size", "256K", "--checkpoint-interval", "0.1"]);
    let out = tool("redis-benchmark")
        .args(["-p", &server.port(), "-t", "set", "-n", "40000", "-c", "16", "-d", "100", "-r", "100000", "-q"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let info = cli(&server, &["INFO", "persistence"]);
    let field = |name: &str| -> u64 {
        info.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    assert!(field("db0_checkpoints:") >= 3, "checkpoints ran under load:\n{info}");
    let appended = field("db0_lsn_appended:");
    assert!(appended > 4 << 20, "the load wrote more than 4 MiB of log ({appended})");
    // Once the load stops, the next checkpoint releases everything below it; retirement runs
    // on a background thread, so wait for it (bounded) rather than assume its timing.
    let count_segments = || {
        std::fs::read_dir(dir.path().join("db0").join("log"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".wal"))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while count_segments() > 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "old segments are not released ({} left for {appended} bytes of log)",
            count_segments()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.stop());
}

#[test]
fn a_data_directory_serves_one_process_at_a_time() {
    let dir = scratch();
    let server = ServerProcess::start(dir.path(), &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by another mirrorlog process"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(server.stop());
}

#[test]
fn expired_keys_vanish_and_are_swept() {
    let dir = scratch();
    let server = ServerProcess::start(dir.path(), &[]);
    let mut c = server.client();
    let keys: Vec<String> = (0..100).map(|i| format!("e{i}")).collect();
    let cmds: Vec<Vec<&[u8]>> = keys.iter().map(|k| vec![&b"SET"[..], k.as_bytes(), b"v", b"PX", b"600"]).collect();
    c.pipeline(&cmds).unwrap();
    c.command(&[b"SET", b"stays", b"v"]).unwrap();
    assert_eq!(c.command(&[b"EXISTS", b"e1"]).unwrap(), Value::Integer(1));
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(c.command(&[b"GET", b"e1"]).unwrap(), Value::Nil, "an expired key reads as absent at once");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.command(&[b"DBSIZE"]).unwrap() != Value::Integer(1) {
        assert!(std::time::Instant::now() < deadline, "the sweep did not remove the expired keys");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.command(&[b"GET", b"stays"]).unwrap(), Value::Bulk(b"v".to_vec()));
    assert!(server.stop());
}

#[test]
fn scan_cursors_are_single_use_and_an_unknown_one_is_an_error() {
    let dir = scratch();
    let server = ServerProcess::start(dir.path(), &[]);
    let mut c = server.client();
    let cmds: Vec<Vec<u8>> = (0..30).map(|i| format!("s{i:02}").into_bytes()).collect();
    let sets: Vec<Vec<&[u8]>> = cmds.iter().map(|k| vec![&b"SET"[..], k.as_slice(), b"v"]).collect();
    c.pipeline(&sets).unwrap();
    let Value::Array(first) = c.command(&[b"SCAN", b"0", b"COUNT", b"10"]).unwrap() else { panic!() };
    let cursor = first[0].as_bytes().unwrap().to_vec();
    assert_ne!(cursor, b"0");
    assert!(matches!(c.command(&[b"SCAN", &cursor]).unwrap(), Value::Array(_)));
    assert_eq!(
        c.command(&[b"SCAN", &cursor]).unwrap(),
        Value::Error("ERR invalid cursor".into()),
        "a cursor is used once"
    );
    assert_eq!(c.command(&[b"SCAN", b"999999"]).unwrap(), Value::Error("ERR invalid cursor".into()));
    // HELLO with a bad password leaves the protocol as it was (RESP2 here).
    assert!(matches!(c.command(&[b"HELLO", b"3", b"AUTH", b"default", b"nope"]).unwrap(), Value::Error(_)));
    assert_eq!(c.command(&[b"GET", b"missing"]).unwrap(), Value::Nil);
    assert!(server.stop());
}

#[test]
fn the_largest_value_is_stored_and_a_larger_bulk_is_refused() {
    let dir = scratch();
    let server = ServerProcess::start(dir.path(), &[]);
    let mut c = server.client();
    let largest = vec![b'L'; mirrorlog::constants::VALUE_SIZE_MAX];
    assert_eq!(c.command(&[b"SET", b"largest", &largest, b"EX", b"1000"]).unwrap(), Value::Simple("OK".into()));
    assert_eq!(c.command(&[b"STRLEN", b"largest"]).unwrap(), Value::Integer(largest.len() as i64));
    let header = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", mirrorlog::constants::VALUE_SIZE_MAX + 1);
    let (reply, closed) = raw_exchange(&server, header.as_bytes());
    assert!(reply.starts_with("-ERR Protocol error: invalid bulk length"), "{reply}");
    assert!(closed);
    assert!(server.stop());
}

/// Two large values pipelined into a small cache: the second waits until the first is durable
/// (its pages can then be written out to make room) instead of failing.
#[test]
fn a_full_cache_makes_a_command_wait_not_fail() {
    let dir = scratch();
    let server = ServerProcess::start(dir.path(), &["--databases", "1", "--cache-size", "18MiB"]);
    let mut c = server.client();
    let a = vec![b'a'; 12 << 20];
    let b = vec![b'b'; 12 << 20];
    let replies = c.pipeline(&[vec![&b"SET"[..], b"a", &a], vec![&b"SET"[..], b"b", &b]]).unwrap();
    assert_eq!(replies, vec![Value::Simple("OK".into()), Value::Simple("OK".into())]);
    assert_eq!(c.command(&[b"STRLEN", b"a"]).unwrap(), Value::Integer(a.len() as i64));
    assert_eq!(c.command(&[b"STRLEN", b"b"]).unwrap(), Value::Integer(b.len() as i64));
    assert!(server.stop());
}

/// Databases live on different shard threads; SELECT hands the connection over, with whatever
/// pipelined input follows it.
/// SELECT inside MULTI, as Redis allows: it moves the transaction's later commands and the
/// connection after EXEC to another database, across shards too; a transaction that would change
/// two databases (two logs) is refused whole, and nothing of it runs.
#[test]
fn select_inside_multi_moves_the_transaction_to_its_one_database() {
    let dir = scratch();
    let server = ServerProcess::start(dir.path(), &["--shards", "2", "--databases", "4", "--cache-size", "128MiB"]);
    let mut c = server.client();
    let replies = c
        .pipeline(&[
            vec![b"MULTI"],
            vec![b"PING"],
            vec![b"SELECT", b"1"],
            vec![b"SET", b"a", b"1"],
            vec![b"INCR", b"n"],
            vec![b"SELECT", b"99"],
            vec![b"GET", b"a"],
            vec![b"EXEC"],
            vec![b"GET", b"a"],
        ])
        .unwrap();
    let Value::Array(items) = &replies[7] else { panic!("EXEC: {:?}", replies[7]) };
    assert_eq!(items[0], Value::Simple("PONG".into()));
    assert_eq!(items[1], Value::Simple("OK".into()));
    assert_eq!(items[2], Value::Simple("OK".into()));
    assert_eq!(items[3], Value::Integer(1));
    assert_eq!(items[4], Value::Error("ERR DB index is out of range".into()));
    assert_eq!(items[5], Value::Bulk(b"1".to_vec()));
    assert_eq!(replies[8], Value::Bulk(b"1".to_vec()), "the connection stays in database 1 after EXEC");
    assert_eq!(cli(&server, &["-n", "0", "EXISTS", "a"]), "0");
    // Writes to two databases: refused whole.
    let replies = c
        .pipeline(&[
            vec![b"MULTI"],
            vec![b"SET", b"b", b"in-1"],
            vec![b"SELECT", b"2"],
            vec![b"SET", b"b", b"in-2"],
            vec![b"EXEC"],
            vec![b"GET", b"b"],
        ])
        .unwrap();
    match &replies[4] {
        Value::Error(e) => assert!(e.starts_with("EXECABORT") && e.contains("databases 1 and 2"), "{e}"),
        other => panic!("a two-database transaction ran: {other:?}"),
    }
    assert_eq!(replies[5], Value::Nil, "nothing ran, and the connection is still in database 1");
    assert_eq!(cli(&server, &["-n", "2", "EXISTS", "b"]), "0");
    // redis-py's transactional pipeline with a SELECT inside, to a database of the other shard.
    let script = r#"
import sys, redis
r = redis.Redis(port=int(sys.argv[1]), db=0)
p = r.pipeline(transaction=True)
p.execute_command("SELECT", 3)
p.set("py", "three")
p.incrby("pyn", 5)
print(p.execute())
r3 = redis.Redis(port=int(sys.argv[1]), db=3)
assert r3.get("py") == b"three" and r3.get("pyn") == b"5", (r3.get("py"), r3.get("pyn"))
# (The pipeline's connection went back to the pool in database 3, as with Redis: a new client.)
assert redis.Redis(port=int(sys.argv[1]), db=0).get("py") is None
print("redis-py ok")
"#;
    let out = std::process::Command::new("python3").arg("-c").arg(script).arg(server.port()).output().unwrap();
    assert!(
        out.status.success(),
        "redis-py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(server.stop());
}

#[test]
fn databases_on_several_shards() {
    let dir = scratch();
    let server = ServerProcess::start(dir.path(), &["--shards", "2", "--databases", "4", "--cache-size", "128MiB"]);
    let mut c = server.client();
    let replies = c
        .pipeline(&[
            vec![b"SET", b"k", b"zero"],
            vec![b"SELECT", b"1"],
            vec![b"SET", b"k", b"one"],
            vec![b"SELECT", b"2"],
            vec![b"SET", b"k", b"two"],
            vec![b"SELECT", b"3"],
            vec![b"SET", b"k", b"three"],
            vec![b"GET", b"k"],
            vec![b"SELECT", b"1"],
            vec![b"GET", b"k"],
            vec![b"CLIENT", b"ID"],
        ])
        .unwrap();
    assert_eq!(replies[7], Value::Bulk(b"three".to_vec()));
    assert_eq!(replies[9], Value::Bulk(b"one".to_vec()));
    for (db, want) in ["zero", "one", "two", "three"].iter().enumerate() {
        assert_eq!(cli(&server, &["-n", &db.to_string(), "GET", "k"]), *want);
    }
    std::thread::sleep(Duration::from_millis(250)); // each shard publishes its figures every 100 ms
    let info = cli(&server, &["INFO", "keyspace"]);
    assert_eq!(info.matches("keys=1").count(), 4, "{info}");
    // Many clients selecting a database of the other shard at once.
    let out = tool("redis-benchmark")
        .args(["-p", &server.port(), "--dbnum", "1", "-t", "set", "-n", "2000", "-c", "20", "-q"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(cli(&server, &["-n", "1", "GET", "k"]), "one");
    assert!(cli(&server, &["-n", "1", "DBSIZE"]).parse::<i64>().unwrap() >= 2);
    assert!(server.stop());
}

/// A database several times larger than its cache: misses are read through the ring while the
/// command waits (other clients go on), the cleaner writes dirty pages ahead of the clock hand so
/// evictions rarely write themselves, and every value reads back right, also under concurrent
/// readers (redis-benchmark) and after a restart.
#[test]
fn a_database_larger_than_its_cache_reads_and_evicts_through_the_ring() {
    let dir = scratch();
    let args = ["--databases", "1", "--cache-size", "18MiB"];
    let server = ServerProcess::start(dir.path(), &args);
    let mut c = server.client();
    let value = |i: u64| -> Vec<u8> { format!("{i:08}").repeat(375).into_bytes() }; // 3000 bytes
    const KEYS: u64 = 9000; // about 37 MB of leaves and overflow pages: twice the cache
    for batch in 0..KEYS / 100 {
        let keys: Vec<String> = (batch * 100..batch * 100 + 100).map(|i| format!("key:{i:012}")).collect();
        let values: Vec<Vec<u8>> = (batch * 100..batch * 100 + 100).map(value).collect();
        let cmds: Vec<Vec<&[u8]>> =
            keys.iter().zip(&values).map(|(k, v)| vec![&b"SET"[..], k.as_bytes(), v.as_slice()]).collect();
        assert!(c.pipeline(&cmds).unwrap().iter().all(|r| *r == Value::Simple("OK".into())));
    }
    let check_all = |c: &mut mirrorlog::client::Client| {
        let mut state = 99u64;
        for _ in 0..KEYS / 50 {
            let keys: Vec<(u64, String)> = (0..50)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let i = state % KEYS;
                    (i, format!("key:{i:012}"))
                })
                .collect();
            let cmds: Vec<Vec<&[u8]>> = keys.iter().map(|(_, k)| vec![&b"GET"[..], k.as_bytes()]).collect();
            for ((i, k), reply) in keys.iter().zip(c.pipeline(&cmds).unwrap()) {
                assert_eq!(reply, Value::Bulk(value(*i)), "{k}");
            }
        }
    };
    check_all(&mut c);
    // Concurrent readers over the same keyspace (redis-benchmark's keys are key:%012d).
    let out = tool("redis-benchmark")
        .args(["-p", &server.port(), "-t", "get", "-n", "20000", "-c", "16", "-r", &KEYS.to_string(), "-q"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_all(&mut c);
    std::thread::sleep(Duration::from_millis(250)); // figures are published every 100 ms
    let info = cli(&server, &["INFO", "persistence"]);
    let field = |name: &str| -> u64 {
        info.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap()
    };
    let (misses, reads_async) = (field("db0_cache_misses:"), field("db0_page_reads_async:"));
    let (eviction_writes, cleaning_writes) = (field("db0_eviction_writes:"), field("db0_cleaning_writes:"));
    eprintln!("misses {misses}, read through the ring {reads_async}; writes by eviction {eviction_writes}, by the cleaner {cleaning_writes}");
    assert!(reads_async > 1000, "misses are read through the ring:\n{info}");
    assert!(misses - reads_async <= 16, "every miss of a command or the sweep is asynchronous:\n{info}");
    assert!(cleaning_writes > eviction_writes, "the cleaner does most eviction writing:\n{info}");
    assert!(server.stop());
    let server = ServerProcess::start(dir.path(), &args);
    let mut c = server.client();
    check_all(&mut c);
    assert!(server.stop());
}

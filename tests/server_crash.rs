//! Crash test of the server: under a write load whose clients record every acknowledged SET, the
//! server is killed with SIGKILL 20 times at random moments; after each restart every
//! acknowledged value (or a later one) is there, and `inspect pages` finds every checksum valid.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::scratch;
use common::server::ServerProcess;
use mirrorlog::client::{Client, Value};

const KILLS: usize = 20;
const WRITERS: usize = 4;
const KEYS_PER_WRITER: u64 = 300;

fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Value layout: "<seq>:<padding>" so a later write of the same key has a larger seq.
fn seq_of(value: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(value);
    text.split(':').next().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("malformed value {text:?}"))
}

#[test]
fn acknowledged_writes_survive_sigkill_of_the_server() {
    let dir = scratch();
    let seed = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("server crash test seed {seed}");
    let mut rng = seed;
    // key -> highest acknowledged seq
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut next_seq = [0u64; WRITERS];
    let mut total_acked = 0u64;
    let writes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for round in 0..KILLS {
        // Odd rounds checkpoint often, so kills also land during and after checkpoints.
        let server =
            ServerProcess::start(dir.path(), if round % 2 == 1 { &["--checkpoint-interval", "0.05"] } else { &[] });
        // Every acknowledged write so far must be there.
        let mut checker = server.client();
        let snapshot: Vec<(String, u64)> = acked.lock().unwrap().iter().map(|(k, v)| (k.clone(), *v)).collect();
        for chunk in snapshot.chunks(200) {
            let mut cmd: Vec<&[u8]> = vec![b"MGET"];
            cmd.extend(chunk.iter().map(|(k, _)| k.as_bytes()));
            let Value::Array(values) = checker.command(&cmd).unwrap() else { panic!("MGET reply") };
            for ((key, want), got) in chunk.iter().zip(values) {
                let got = got
                    .as_bytes()
                    .map(seq_of)
                    .unwrap_or_else(|| panic!("round {round}: acknowledged key {key} lost (seed {seed})"));
                assert!(
                    got >= *want,
                    "round {round}: key {key} holds seq {got}, older than acknowledged {want} (seed {seed})"
                );
            }
        }
        drop(checker);

        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (acked, stop, addr, writes) = (acked.clone(), stop.clone(), server.addr, writes.clone());
                let mut seq = next_seq[w];
                std::thread::spawn(move || {
                    let Ok(mut client) = Client::connect(addr, Duration::from_secs(5)) else { return seq };
                    while !stop.load(Ordering::SeqCst) {
                        let batch: Vec<(String, String)> = (0..16)
                            .map(|i| {
                                let s = seq + i;
                                (
                                    format!("w{w}:k{}", s % KEYS_PER_WRITER),
                                    format!("{s}:{}", "v".repeat((s % 97) as usize)),
                                )
                            })
                            .collect();
                        let cmds: Vec<Vec<&[u8]>> =
                            batch.iter().map(|(k, v)| vec![&b"SET"[..], k.as_bytes(), v.as_bytes()]).collect();
                        let Ok(replies) = client.pipeline(&cmds) else { break };
                        let mut acked = acked.lock().unwrap();
                        for ((k, v), reply) in batch.iter().zip(replies) {
                            assert_eq!(reply, Value::Simple("OK".into()));
                            let s = seq_of(v.as_bytes());
                            let entry = acked.entry(k.clone()).or_insert(0);
                            *entry = (*entry).max(s);
                        }
                        writes.fetch_add(16, Ordering::Relaxed);
                        seq += 16;
                    }
                    seq
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(30 + next(&mut rng) % 300));
        server.kill9();
        stop.store(true, Ordering::SeqCst);
        for (w, writer) in writers.into_iter().enumerate() {
            // Sequence numbers of writes that may or may not have landed are never reused.
            next_seq[w] = writer.join().unwrap() + 1000;
        }
        let count = acked.lock().unwrap().len() as u64;
        total_acked = total_acked.max(count);
        let (code, text) = common::server::inspect_pages(dir.path());
        assert!(code == Some(0) && text.contains(" 0 bad"), "round {round}: inspect pages after the kill:\n{text}");
        // Inspection redoes the log in memory, as recovery will: every acknowledged key is there.
        let keys: u64 = text
            .lines()
            .filter(|l| l.contains("pages valid"))
            .filter_map(|l| l.split("bad; ").nth(1)?.split(' ').next()?.parse::<u64>().ok())
            .sum();
        assert!(keys >= count, "round {round}: inspect pages finds {keys} keys, {count} were acknowledged:\n{text}");
        eprintln!(
            "round {round}: killed; {} writes and {count} keys acknowledged so far",
            writes.load(Ordering::Relaxed)
        );
    }
    let server = ServerProcess::start(dir.path(), &[]);
    assert!(server.stop(), "a clean stop after the last recovery");
    let (code, text) = common::server::inspect_pages(dir.path());
    assert!(code == Some(0) && text.contains(" 0 bad"), "{text}");
    assert!(total_acked >= 100, "the load acknowledged too little ({total_acked} keys)");
}

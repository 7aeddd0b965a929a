//! The database store end to end: B+tree operations against a model, transactions through the
//! log, crash recovery by redo, torn and corrupt pages.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::scratch;
use mirrorlog::io::ring::Ring;
use mirrorlog::store::btree;
use mirrorlog::store::database::{CommitProgress, Database, DatabaseConfig};
use mirrorlog::store::page::{PageId, PAGE_SIZE};
use mirrorlog::wal::{DbId, Epoch, Lsn};
use mirrorlog::Error;

const LOG_TOKEN: u64 = 1 << 40;

fn config(dir: &Path, cache_pages: usize) -> DatabaseConfig {
    DatabaseConfig {
        dir: dir.to_path_buf(),
        db_id: DbId(1),
        epoch: Epoch(1),
        cache_pages,
        segment_size: 1 << 20,
        restoring: false,
    }
}

fn open(dir: &Path, ring: &mut Ring, cache_pages: usize) -> Database {
    Database::open(config(dir, cache_pages), ring, LOG_TOKEN).unwrap()
}

fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn key(i: u64) -> Vec<u8> {
    format!("key:{:08}", i).into_bytes()
}

fn value(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize + j) as u8).collect()
}

fn put(db: &mut Database, ring: &mut Ring, k: &[u8], v: &[u8]) {
    db.begin();
    btree::put(db.pool(), k, v).unwrap();
    db.commit_blocking(ring).unwrap();
}

fn get(db: &mut Database, k: &[u8]) -> Option<Vec<u8>> {
    btree::get(db.pool(), k).unwrap()
}

/// Commits the transaction in progress without hardening it; returns the LSN its reply waits for.
fn commit_appended(db: &mut Database) -> Lsn {
    match db.commit().unwrap() {
        CommitProgress::Appended(lsn) => lsn,
        other => panic!("not appended: {other:?}"),
    }
}

/// Reads `k` in a transaction of its own: the value, and the LSN the reply waits for.
fn read_and_wait(db: &mut Database, k: &[u8]) -> (Option<Vec<u8>>, Lsn) {
    db.begin();
    let v = btree::get(db.pool(), k).unwrap();
    (v, commit_appended(db))
}

#[test]
fn random_operations_match_a_model_across_reopens() {
    let dir = scratch();
    let mut ring = Ring::new(32).unwrap();
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for round in 0..3 {
        let mut db = open(dir.path(), &mut ring, 64);
        for (k, v) in &model {
            assert_eq!(
                get(&mut db, k).as_ref(),
                Some(v),
                "round {round}: key {:?} after reopen",
                String::from_utf8_lossy(k)
            );
        }
        for _ in 0..1500 {
            let k = key(next(&mut state) % 600);
            match next(&mut state) % 10 {
                0..=5 => {
                    let len = match next(&mut state) % 20 {
                        0 => 5000 + (next(&mut state) % 20000) as usize, // overflow chain
                        _ => (next(&mut state) % 300) as usize,
                    };
                    let v = value(next(&mut state), len);
                    put(&mut db, &mut ring, &k, &v);
                    model.insert(k, v);
                }
                6..=7 => {
                    db.begin();
                    let existed = btree::delete(db.pool(), &k).unwrap();
                    db.commit_blocking(&mut ring).unwrap();
                    assert_eq!(existed, model.remove(&k).is_some());
                }
                _ => assert_eq!(get(&mut db, &k), model.get(&k).cloned()),
            }
        }
        assert_eq!(btree::meta(db.pool()).unwrap().key_count, model.len() as u64);
        let (keys, _) = btree::keys_after(db.pool(), None, usize::MAX).unwrap();
        assert_eq!(keys, model.keys().cloned().collect::<Vec<_>>(), "round {round}: ordered scan");
    }
}

#[test]
fn a_crash_before_any_page_write_is_recovered_by_redo() {
    let dir = scratch();
    let mut ring = Ring::new(32).unwrap();
    {
        let mut db = open(dir.path(), &mut ring, 4096);
        for i in 0..2000 {
            put(&mut db, &mut ring, &key(i), &value(i, 100));
        }
        // Dropped without a checkpoint: the data file holds none of these pages.
    }
    let mut db = open(dir.path(), &mut ring, 64);
    assert!(db.redo_report.transactions >= 2000, "{:?}", db.redo_report);
    for i in 0..2000 {
        assert_eq!(get(&mut db, &key(i)), Some(value(i, 100)), "key {i}");
    }
}

#[test]
fn a_small_cache_evicts_and_reads_back() {
    let dir = scratch();
    let mut ring = Ring::new(32).unwrap();
    let mut db = open(dir.path(), &mut ring, 16);
    for i in 0..3000 {
        put(&mut db, &mut ring, &key(i), &value(i, 200));
    }
    for i in (0..3000).step_by(7) {
        assert_eq!(get(&mut db, &key(i)), Some(value(i, 200)));
    }
    assert!(db.pool().stats.evictions > 0);
    assert!(db.pool().cached() <= 16);
}

#[test]
fn limits_are_refused_before_anything_changes() {
    let dir = scratch();
    let mut ring = Ring::new(32).unwrap();
    let mut db = open(dir.path(), &mut ring, 64);
    db.begin();
    let err = btree::put(db.pool(), &vec![b'k'; 1025], b"v").unwrap_err();
    assert!(matches!(err, Error::Limit(_)), "{err}");
    let too_big = mirrorlog::constants::VALUE_SIZE_MAX + mirrorlog::store::value::STORED_VALUE_OVERHEAD_MAX + 1;
    let err = btree::put(db.pool(), b"k", &vec![0; too_big]).unwrap_err();
    assert!(matches!(err, Error::Limit(_)), "{err}");
    db.abort();
    assert_eq!(btree::meta(db.pool()).unwrap().key_count, 0);
}

#[test]
fn a_sixteen_mebibyte_value_spans_many_log_batches() {
    let dir = scratch();
    let mut ring = Ring::new(32).unwrap();
    let big = value(7, 16 * 1024 * 1024);
    {
        let mut db = open(dir.path(), &mut ring, 8192);
        put(&mut db, &mut ring, b"big", &big);
        assert_eq!(get(&mut db, b"big").as_deref(), Some(&big[..]));
    }
    // A transaction's pages stay cached until it commits: a 16 MiB value needs a cache of more
    // than 4,100 pages.
    let mut db = open(dir.path(), &mut ring, 8192);
    assert_eq!(get(&mut db, b"big").as_deref(), Some(&big[..]), "after redo");
    let log_before = db.log.lsn_appended();
    // Overwriting frees the chain for reuse.
    put(&mut db, &mut ring, b"big", b"small");
    assert!(db.log.lsn_appended().0 - log_before.0 < 64 * 1024, "freeing a chain logs little, not the value");
    let before = btree::meta(db.pool()).unwrap().next_page;
    put(&mut db, &mut ring, b"big2", &value(1, 100_000));
    assert_eq!(btree::meta(db.pool()).unwrap().next_page, before, "freed pages are reused");
}

#[test]
fn a_corrupt_data_page_is_restored_from_the_log_image_or_reported() {
    let dir = scratch();
    let mut ring = Ring::new(32).unwrap();
    {
        let mut db = open(dir.path(), &mut ring, 4096);
        for i in 0..50 {
            put(&mut db, &mut ring, &key(i), &value(i, 100));
        }
        db.checkpoint_now().unwrap();
        // After the checkpoint the next change of the leaf logs a full image.
        put(&mut db, &mut ring, &key(1), &value(99, 100));
        db.checkpoint_now().unwrap();
        put(&mut db, &mut ring, &key(2), &value(98, 100));
    }
    let root_leaf = PageId(1);
    let data = dir.path().join("data.pages");
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&data).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, root_leaf.0 * PAGE_SIZE as u64 + 3000).unwrap();
    f.write_all_at(&[b[0] ^ 0x20], root_leaf.0 * PAGE_SIZE as u64 + 3000).unwrap();
    drop(f);
    // The leaf changed after the last checkpoint, so the log holds its image: redo repairs it.
    let mut db = open(dir.path(), &mut ring, 64);
    assert!(db.redo_report.pages_restored_from_images >= 1, "{:?}", db.redo_report);
    assert_eq!(get(&mut db, &key(1)), Some(value(99, 100)));
    assert_eq!(get(&mut db, &key(2)), Some(value(98, 100)));
    assert_eq!(get(&mut db, &key(3)), Some(value(3, 100)));
    db.checkpoint_now().unwrap();
    drop(db);

    // Corrupt it again with no change after the checkpoint: nothing in the log can repair it, so
    // the read fails with a clear error — never wrong data.
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&data).unwrap();
    f.read_exact_at(&mut b, root_leaf.0 * PAGE_SIZE as u64 + 3000).unwrap();
    f.write_all_at(&[b[0] ^ 0x20], root_leaf.0 * PAGE_SIZE as u64 + 3000).unwrap();
    drop(f);
    let mut db = open(dir.path(), &mut ring, 64);
    let err = btree::get(db.pool(), &key(3)).unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
}

/// A checkpoint whose page writes go through the ring in parallel writes every dirty page, and
/// completions of other operations that arrive meanwhile are kept for the shard loop.
#[test]
fn a_checkpoint_through_the_ring_writes_every_page_and_keeps_other_completions() {
    let dir = scratch();
    let mut ring = Ring::new(64).unwrap();
    let mut db = open(dir.path(), &mut ring, 8192);
    for i in 0..3000 {
        put(&mut db, &mut ring, &key(i), &value(i, 300));
    }
    let writes_before = db.pool().stats.page_writes;
    // Another operation in flight on the same ring: a short timeout.
    ring.timeout(std::time::Duration::from_millis(1), 77).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert!(db.checkpoint_through(&mut ring, 1 << 56).unwrap());
    assert!(db.pool().stats.page_writes - writes_before > 50, "the dirty pages were written");
    let mut out = Vec::new();
    ring.submit_and_wait(1).unwrap();
    ring.reap(&mut out);
    assert!(out.iter().any(|c| c.token == 77), "the timeout's completion is handed back");
    drop(db);
    // Everything is in the data file: reopening redoes nothing.
    let mut db = open(dir.path(), &mut ring, 64);
    assert_eq!(db.redo_report.records_applied, 0, "{:?}", db.redo_report);
    assert_eq!(get(&mut db, &key(2999)), Some(value(2999, 300)));
}

/// A shard's loop in miniature: commits one transaction of puts while the incremental checkpoint
/// moves on, routing each completion to the log or to the checkpoint by its token, until the
/// transaction is hardened.
fn put_during_checkpoint(db: &mut Database, ring: &mut Ring, puts: &[(Vec<u8>, Vec<u8>)]) {
    const CHECKPOINT_TOKEN: u64 = 1 << 56;
    db.begin();
    for (k, v) in puts {
        btree::put(db.pool(), k, v).unwrap();
    }
    let mut progress = db.commit().unwrap();
    let mut wakes = Vec::new();
    let mut completions = Vec::new();
    loop {
        if let CommitProgress::Appended(lsn) = progress {
            if db.log.lsn_hardened() >= lsn {
                db.checkpoint_step(ring, CHECKPOINT_TOKEN).unwrap();
                return;
            }
        }
        db.checkpoint_step(ring, CHECKPOINT_TOKEN).unwrap();
        db.log.submit(ring).unwrap();
        ring.submit_and_wait(1).unwrap();
        ring.reap(&mut completions);
        for c in completions.drain(..) {
            if c.token == LOG_TOKEN {
                db.on_log_completion(c, &mut wakes);
            } else {
                assert_eq!(c.token & !((1 << 32) - 1), CHECKPOINT_TOKEN, "no other operation is in flight");
                db.on_checkpoint_completion(c).unwrap();
            }
        }
        if progress == CommitProgress::WaitingForSpace {
            progress = db.continue_commit().unwrap();
        }
    }
}

/// Checkpoints are incremental: commands go on while the pages dirty at the redo LSN are written,
/// pages changed while their write is in flight stay dirty (a small cache evicts and reads them
/// back, so a page wrongly counted clean would read stale), and after a crash, before or after
/// the checkpoint completes, every committed value is there.
#[test]
fn an_incremental_checkpoint_runs_while_commands_go_on() {
    let dir = scratch();
    let mut ring = Ring::new(256).unwrap();
    let mut db = open(dir.path(), &mut ring, 256);
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for i in 0..8000 {
        put(&mut db, &mut ring, &key(i), &value(i, 120));
        model.insert(key(i), value(i, 120));
    }
    let (checkpoints_before, redo_before) = (db.checkpoints, db.checkpoint_lsn());
    db.request_checkpoint();
    let mut state = 7u64;
    let mut puts_during = 0u64;
    let mut round = 0u64;
    while db.checkpoints == checkpoints_before {
        // Many pages per transaction, so some of them have a write in flight.
        let puts: Vec<(Vec<u8>, Vec<u8>)> = (0..40)
            .map(|j| {
                let i = next(&mut state) % 8000;
                (key(i), value(i + 1_000_000 + round * 40 + j, 120))
            })
            .collect();
        put_during_checkpoint(&mut db, &mut ring, &puts);
        model.extend(puts);
        if db.checkpoint_in_progress() {
            puts_during += 1;
        }
        round += 1;
        assert!(round < 100_000, "the checkpoint never completed");
    }
    assert!(puts_during >= 2, "commands went on during the checkpoint: {puts_during}");
    assert!(db.checkpoint_lsn() > redo_before);
    for (k, v) in &model {
        assert_eq!(get(&mut db, k).as_ref(), Some(v), "{}", String::from_utf8_lossy(k));
    }
    // A second checkpoint, and a crash while it is in progress.
    db.request_checkpoint();
    for round in 0..40 {
        let i = next(&mut state) % 8000;
        let puts = vec![(key(i), value(i + 2_000_000 + round, 120))];
        put_during_checkpoint(&mut db, &mut ring, &puts);
        model.extend(puts);
    }
    let recorded = db.checkpoint_lsn();
    drop(db);
    let mut db = open(dir.path(), &mut ring, 256);
    assert!(db.redo_report.redo_from >= recorded, "{:?}", db.redo_report);
    for (k, v) in &model {
        assert_eq!(get(&mut db, k).as_ref(), Some(v), "after the crash: {}", String::from_utf8_lossy(k));
    }
}

/// A failed page write of a checkpoint (EIO, injected through the store's own layer) is fatal for
/// the database: it reports the failure and never records the checkpoint; reopening recovers
/// every committed value from the log.
#[test]
fn a_failed_checkpoint_page_write_is_fatal_and_loses_nothing() {
    const CHECKPOINT_TOKEN: u64 = 1 << 56;
    let dir = scratch();
    let mut ring = Ring::new(256).unwrap();
    let mut db = open(dir.path(), &mut ring, 4096);
    for i in 0..2000 {
        put(&mut db, &mut ring, &key(i), &value(i, 120));
    }
    let recorded = db.checkpoint_lsn();
    db.pool().fail_page_write_number = Some(5);
    db.request_checkpoint();
    let mut failure = None;
    let mut completions = Vec::new();
    while failure.is_none() {
        db.checkpoint_step(&mut ring, CHECKPOINT_TOKEN).unwrap();
        assert!(db.checkpoint_in_progress());
        ring.submit_and_wait(1).unwrap();
        ring.reap(&mut completions);
        for c in completions.drain(..) {
            if let Err(e) = db.on_checkpoint_completion(c) {
                failure.get_or_insert(e);
            }
        }
    }
    let failure = failure.unwrap();
    assert!(matches!(failure, Error::DataFailed(_)), "{failure}");
    assert!(db.is_failed());
    assert!(db.failure().unwrap().contains("Input/output error"), "{:?}", db.failure());
    assert_eq!(db.checkpoint_lsn(), recorded, "the checkpoint is not recorded");
    // Later steps do nothing (no more writes, no sync).
    db.checkpoint_step(&mut ring, CHECKPOINT_TOKEN).unwrap();
    while ring.in_flight() > 0 {
        ring.submit_and_wait(1).unwrap();
        ring.reap(&mut completions);
        completions.clear();
    }
    drop(db);
    let mut db = open(dir.path(), &mut ring, 4096);
    assert!(!db.is_failed());
    for i in 0..2000 {
        assert_eq!(get(&mut db, &key(i)), Some(value(i, 120)));
    }
}

/// Runs `op` on each item, `batch` items to a committed transaction.
fn in_batches<T>(db: &mut Database, ring: &mut Ring, items: &[T], batch: usize, mut op: impl FnMut(&mut Database, &T)) {
    for chunk in items.chunks(batch) {
        db.begin();
        for item in chunk {
            op(db, item);
        }
        db.commit_blocking(ring).unwrap();
    }
}

/// The tree's shape (the walk checks the structure), with its key count checked against the meta
/// page and every page below `next_page` accounted for: in the tree, in a live overflow chain or
/// on the free list, none leaked and none twice.
fn checked_shape(db: &mut Database) -> btree::TreeShape {
    let shape = btree::shape(db.pool()).unwrap();
    let meta = btree::meta(db.pool()).unwrap();
    assert_eq!(shape.keys, meta.key_count, "{shape:?}");
    assert_eq!(shape.pages(), meta.next_page, "every page is accounted for once: {shape:?}");
    shape
}

/// Checks the database holds exactly `model`: every key reads back, and a scan (in pages, through
/// `keys_after`'s continuation) walks exactly the model's keys in order.
fn check_model(db: &mut Database, model: &BTreeMap<Vec<u8>, Vec<u8>>, context: &str) {
    for (k, v) in model {
        assert_eq!(get(db, k).as_ref(), Some(v), "{context}: key {:?}", String::from_utf8_lossy(k));
    }
    let mut scanned = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let (keys, next) = btree::keys_after(db.pool(), after.as_deref(), 97).unwrap();
        scanned.extend(keys);
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert!(scanned.iter().eq(model.keys()), "{context}: the scan walks exactly the model's keys");
    assert_eq!(btree::meta(db.pool()).unwrap().key_count, model.len() as u64, "{context}");
}

const MANY: u64 = 20_000;
const VALUE_LEN: usize = 100;

/// Inserts `MANY` keys, deletes all but every hundredth in `order`, and checks the contents, the
/// tree's shrinking, page reuse, recovery after a crash, and deleting everything.
fn delete_most_keys(order: &[u64], what: &str) {
    let dir = scratch();
    let mut ring = Ring::new(32).unwrap();
    let mut db = open(dir.path(), &mut ring, 4096);
    let all: Vec<u64> = (0..MANY).collect();
    in_batches(&mut db, &mut ring, &all, 500, |db, &i| {
        btree::put(db.pool(), &key(i), &value(i, VALUE_LEN)).unwrap();
    });
    let full = checked_shape(&mut db);

    let doomed: Vec<u64> = order.iter().copied().filter(|i| i % 100 != 0).collect();
    in_batches(&mut db, &mut ring, &doomed, 500, |db, &i| assert!(btree::delete(db.pool(), &key(i)).unwrap()));
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = (0..MANY).step_by(100).map(|i| (key(i), value(i, VALUE_LEN))).collect();
    check_model(&mut db, &model, what);
    for &i in doomed.iter().step_by(7) {
        assert_eq!(get(&mut db, &key(i)), None, "{what}: deleted key {i}");
    }
    let small = checked_shape(&mut db);
    // What the remaining keys need: their cells and slots, packed full.
    let cell = 7 + key(0).len() + VALUE_LEN + 2;
    let needed = (model.len() * cell).div_ceil(mirrorlog::store::node::NODE_AREA) as u64;
    eprintln!("{what}: {MANY} keys {full:?}; {} keys {small:?}; {needed} leaves needed", model.len());
    assert_eq!(full.height, 3, "{full:?}");
    assert!(full.leaves > 500, "{full:?}");
    assert_eq!((small.height, small.internals), (2, 1), "{what}: one root above the leaves: {small:?}");
    // A leaf stays in the tree once it is at least a quarter full (`btree::MERGE_BELOW`).
    assert!(small.leaves <= 4 * needed, "{what}: {} leaves for {needed} leaves' worth of keys", small.leaves);
    assert!(small.free_pages >= full.leaves + full.internals - small.leaves - small.internals);

    // Freed pages are reused before the file grows.
    let next_page = btree::meta(db.pool()).unwrap().next_page;
    let more: Vec<u64> = (MANY..MANY + 5000).collect();
    in_batches(&mut db, &mut ring, &more, 500, |db, &i| {
        btree::put(db.pool(), &key(i), &value(i, VALUE_LEN)).unwrap();
    });
    model.extend(more.iter().map(|&i| (key(i), value(i, VALUE_LEN))));
    assert_eq!(btree::meta(db.pool()).unwrap().next_page, next_page, "{what}: freed pages are reused");
    let refilled = checked_shape(&mut db);
    assert!(refilled.free_pages < small.free_pages && refilled.leaves > small.leaves, "{refilled:?}");

    // A crash: no checkpoint, the data file holds none of this; redo rebuilds the same tree.
    drop(db);
    let mut db = open(dir.path(), &mut ring, 64);
    check_model(&mut db, &model, &format!("{what}, after redo"));
    assert_eq!(checked_shape(&mut db), refilled, "{what}: the same tree after redo");

    // Everything deleted: a single empty root leaf.
    let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
    in_batches(&mut db, &mut ring, &keys, 500, |db, k| assert!(btree::delete(db.pool(), k).unwrap()));
    let empty = checked_shape(&mut db);
    let meta = btree::meta(db.pool()).unwrap();
    assert_eq!((empty.height, empty.leaves, empty.internals, empty.keys), (1, 1, 0, 0), "{what}: {empty:?}");
    assert_eq!(empty.free_pages, meta.next_page - 2, "{what}: every other page is free");
    assert_eq!(btree::keys_after(db.pool(), None, 10).unwrap(), (vec![], None));
}

#[test]
fn deleting_most_keys_in_random_order_merges_the_tree_down() {
    let mut order: Vec<u64> = (0..MANY).collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..order.len()).rev() {
        order.swap(i, (next(&mut state) % (i as u64 + 1)) as usize);
    }
    delete_most_keys(&order, "random order");
}

#[test]
fn deleting_most_keys_in_ascending_order_merges_the_tree_down() {
    delete_most_keys(&(0..MANY).collect::<Vec<_>>(), "ascending order");
}

#[test]
fn deleting_most_keys_in_descending_order_merges_the_tree_down() {
    delete_most_keys(&(0..MANY).rev().collect::<Vec<_>>(), "descending order");
}

/// A key for the model test: keys of 6 to 265 bytes, so internal nodes hold few separators and
/// the tree grows three levels from a few thousand keys.
fn model_key(i: u64) -> Vec<u8> {
    format!("m{i:05}{}", "-".repeat((i % 8 * 37) as usize)).into_bytes()
}

/// A key to delete: any of `MODEL_KEYS`, or half the time the first present one after a random
/// point (so deletes mostly hit).
fn pick_victim(model: &BTreeMap<Vec<u8>, Vec<u8>>, state: &mut u64) -> Vec<u8> {
    let k = model_key(next(state) % MODEL_KEYS);
    match next(state) % 2 {
        0 => model.range(k.clone()..).next().map_or(k, |(present, _)| present.clone()),
        _ => k,
    }
}

const MODEL_KEYS: u64 = 3000;

/// A value for the model test: usually small, sometimes near the inline limit, sometimes large
/// enough for an overflow chain.
fn model_value(state: &mut u64) -> Vec<u8> {
    let len = match next(state) % 25 {
        0 => 5000 + (next(state) % 15000) as usize,
        1..=5 => (next(state) % 900) as usize,
        _ => (next(state) % 150) as usize,
    };
    value(next(state), len)
}

/// Deletes up to `n` keys of `model` from a random point on, in a transaction that is then
/// aborted: merges happen inside it (the tree shrinks), and the abort restores the tree exactly.
fn delete_many_then_abort(db: &mut Database, model: &BTreeMap<Vec<u8>, Vec<u8>>, state: &mut u64, n: usize) {
    let before = checked_shape(db);
    let meta = btree::meta(db.pool()).unwrap();
    let from = model_key(next(state) % MODEL_KEYS);
    let victims: Vec<Vec<u8>> = model.range(from..).take(n).map(|(k, _)| k.clone()).collect();
    db.begin();
    for k in &victims {
        assert!(btree::delete(db.pool(), k).unwrap());
    }
    let inside = btree::shape(db.pool()).unwrap();
    if victims.len() == n {
        assert!(inside.leaves < before.leaves, "merges happened inside the transaction: {inside:?} {before:?}");
    }
    db.abort();
    assert_eq!(btree::meta(db.pool()).unwrap(), meta);
    assert_eq!(checked_shape(db), before, "the abort undoes the merges");
}

/// Random puts and deletes (some values in overflow chains) against a model, through growth and
/// shrinking, with aborted transactions among them and a crash and recovery between rounds.
#[test]
fn merges_match_a_model_with_overflow_values_and_aborted_transactions() {
    let dir = scratch();
    let mut ring = Ring::new(32).unwrap();
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut state = 0x5851_f42d_4c95_7f2du64;
    let (mut transactions, mut aborted, mut peak) = (0u64, 0u64, btree::TreeShape::default());
    for round in 0..2 {
        // Dropped without a checkpoint at the end of each round: the reopen redoes it all.
        let mut db = open(dir.path(), &mut ring, 256);
        check_model(&mut db, &model, &format!("round {round}, after reopen"));
        let mut last = checked_shape(&mut db);
        // Grow, shrink some, grow, shrink to a few keys.
        for (phase, put_percent) in [85, 20, 85, 3].into_iter().enumerate() {
            for t in 0..800 {
                let abort = next(&mut state) % 8 == 0;
                let mut pending: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
                db.begin();
                for _ in 0..1 + next(&mut state) % 6 {
                    let put = next(&mut state) % 100 < put_percent;
                    let k =
                        if put { model_key(next(&mut state) % MODEL_KEYS) } else { pick_victim(&model, &mut state) };
                    let existed = pending.get(&k).map_or(model.contains_key(&k), Option::is_some);
                    if put {
                        let v = model_value(&mut state);
                        assert_eq!(btree::put(db.pool(), &k, &v).unwrap(), existed);
                        pending.insert(k, Some(v));
                    } else {
                        assert_eq!(btree::delete(db.pool(), &k).unwrap(), existed);
                        pending.insert(k, None);
                    }
                }
                if abort {
                    db.abort();
                    aborted += 1;
                } else {
                    db.commit_blocking(&mut ring).unwrap();
                    for (k, v) in pending {
                        match v {
                            Some(v) => model.insert(k, v),
                            None => model.remove(&k),
                        };
                    }
                }
                transactions += 1;
                if t % 100 == 99 {
                    let context = format!("round {round} phase {phase} transaction {t}");
                    check_model(&mut db, &model, &context);
                    let shape = checked_shape(&mut db);
                    peak = if shape.leaves > peak.leaves { shape } else { peak };
                    if model.len() > 300 {
                        delete_many_then_abort(&mut db, &model, &mut state, 200);
                    }
                }
            }
            let shape = checked_shape(&mut db);
            eprintln!("round {round} phase {phase}: {} keys, {shape:?}", model.len());
            if put_percent < 50 {
                assert!(shape.leaves < last.leaves, "shrinking merged leaves: {shape:?}, before {last:?}");
            }
            if put_percent == 3 {
                assert!(shape.leaves * 4 < peak.leaves, "to a few: {shape:?}, peak {peak:?}");
                assert!(shape.height < peak.height, "and the tree got lower: {shape:?}, peak {peak:?}");
            }
            last = shape;
        }
    }
    eprintln!("{transactions} transactions, {aborted} aborted; peak {peak:?}");
}

/// A ring read of a page that another path installed, changed and evicted while the read was in
/// flight brings back an older image: it is dropped, never installed over the newer page.
#[test]
fn a_ring_read_overtaken_by_a_newer_page_is_dropped() {
    let dir = scratch();
    let mut ring = Ring::new(64).unwrap();
    let mut db = open(dir.path(), &mut ring, 16);
    for i in 0..400 {
        put(&mut db, &mut ring, &key(i), &value(i, 300));
    }
    assert!(db.checkpoint_now().unwrap());
    drop(db);
    let mut db = open(dir.path(), &mut ring, 16);
    let leaf = btree::leaf_of(db.pool(), &key(7)).unwrap();
    // Evict the leaf: read keys far away.
    for i in 200..400 {
        get(&mut db, &key(i));
    }
    assert!(!db.pool().is_cached(leaf));
    assert!(db.pool().submit_read(&mut ring, 1 << 50, leaf).unwrap());
    let mut completions = Vec::new();
    ring.submit_and_wait(1).unwrap();
    ring.reap(&mut completions);
    let read = completions.pop().unwrap();
    assert_eq!(read.token, 1 << 50);
    // Meanwhile: a synchronous miss installs the leaf, a put changes it, a checkpoint writes it,
    // and other reads evict it again.
    put(&mut db, &mut ring, &key(7), b"newer");
    assert!(db.checkpoint_now().unwrap());
    for i in 200..400 {
        get(&mut db, &key(i));
    }
    assert!(!db.pool().is_cached(leaf));
    assert!(db.pool().complete_read(leaf, read.result, read.buf).unwrap());
    assert_eq!(get(&mut db, &key(7)), Some(b"newer".to_vec()), "the older image was not installed");
}

/// A SET of an existing key with a value of the same size (the common overwrite) changes the
/// value's bytes in place: the cell keeps its place, so the logged diff holds only the bytes that
/// differ. Moving the cell instead (remove and insert) would log the whole cell at its new place.
#[test]
fn an_overwrite_of_the_same_size_logs_only_the_changed_bytes() {
    let dir = scratch();
    let mut ring = Ring::new(64).unwrap();
    let mut db = open(dir.path(), &mut ring, 256);
    let n = 300;
    for i in 0..n {
        put(&mut db, &mut ring, &key(i), &value(i, 100));
    }
    let shape = checked_shape(&mut db);
    let start = db.log.lsn_appended();
    for i in 0..n {
        let mut v = value(i, 100);
        v[50] ^= 0xff;
        put(&mut db, &mut ring, &key(i), &v);
    }
    let per_overwrite = db.log.lsn_appended().since(start) / n;
    // A diff record (40-byte header, page id, one 1-byte range) and a commit record, 8-aligned.
    assert!(per_overwrite < 128, "{per_overwrite} log bytes per overwrite");
    assert_eq!(checked_shape(&mut db), shape);
    // Smaller values shrink in place, larger ones move; every value reads back.
    for i in 0..n {
        let len = if i % 2 == 0 { 60 } else { 140 };
        put(&mut db, &mut ring, &key(i), &value(i + 1, len));
    }
    for i in 0..n {
        let len = if i % 2 == 0 { 60 } else { 140 };
        assert_eq!(get(&mut db, &key(i)), Some(value(i + 1, len)), "key {i}");
    }
    checked_shape(&mut db);
}

/// A transaction that changes nothing waits only for the pages it saw: a read of a key whose
/// leaf is hardened answers at once while another leaf's commit is in flight, and a read of
/// that other leaf (a present or an absent key) waits for the commit.
#[test]
fn a_transaction_that_changes_nothing_waits_only_for_the_pages_it_saw() {
    let dir = scratch();
    let mut ring = Ring::new(64).unwrap();
    let mut db = open(dir.path(), &mut ring, 256);
    let n = 2000;
    for i in 0..n {
        put(&mut db, &mut ring, &key(i), &value(i, 100));
    }
    // Room on key 0's leaf, so that an insert there below does not split it.
    db.begin();
    assert!(btree::delete(db.pool(), &key(1)).unwrap());
    db.commit_blocking(&mut ring).unwrap();
    let hardened = db.log.lsn_hardened();
    // Everything is hardened: a read waits for nothing beyond it.
    assert!(read_and_wait(&mut db, &key(7)).1 <= hardened);

    // A change of key 0 is appended and not hardened (nothing is submitted to the ring).
    db.begin();
    btree::put(db.pool(), &key(0), &value(1, 100)).unwrap();
    let pending = commit_appended(&mut db);
    assert!(pending > db.log.lsn_hardened());
    let changed_leaf = btree::leaf_of(db.pool(), &key(0)).unwrap();
    let other = (1..n).rev().find(|&i| btree::leaf_of(db.pool(), &key(i)).unwrap() != changed_leaf).unwrap();

    let (v, wait) = read_and_wait(&mut db, &key(other));
    assert_eq!(v, Some(value(other, 100)));
    assert!(wait <= hardened, "a read of a hardened leaf waits for {wait:?}, hardened {hardened:?}");
    let (v, wait) = read_and_wait(&mut db, &key(0));
    assert_eq!(v, Some(value(1, 100)));
    assert!(wait >= pending, "a read of the changed key must wait for its commit");
    // An absent key that would live on the changed leaf: its absence is only as durable as the leaf.
    let mut absent = key(0);
    absent.push(b'x');
    assert_eq!(btree::leaf_of(db.pool(), &absent).unwrap(), changed_leaf);
    let (v, wait) = read_and_wait(&mut db, &absent);
    assert_eq!(v, None);
    assert!(wait >= pending, "a read of an absent key on the changed leaf must wait for the commit");

    // An insert on that leaf, also appended and not hardened. It changes the meta page's key count
    // too, which every lookup reads for the root: a read of another leaf still waits for nothing.
    let shape = btree::shape(db.pool()).unwrap();
    db.begin();
    btree::put(db.pool(), &absent, b"inserted").unwrap();
    let inserted = commit_appended(&mut db);
    assert_eq!(btree::shape(db.pool()).unwrap().leaves, shape.leaves, "the insert split a leaf");
    let (v, wait) = read_and_wait(&mut db, &key(other));
    assert_eq!(v, Some(value(other, 100)));
    assert!(wait <= hardened, "a read of a hardened leaf waits for {wait:?} while an insert is in flight");
    let (v, wait) = read_and_wait(&mut db, &absent);
    assert_eq!(v.as_deref(), Some(&b"inserted"[..]));
    assert!(wait >= inserted, "a read of the inserted key must wait for its commit");

    // A write of the value a key already has, right after a checkpoint (when a change would log
    // a full page image), logs nothing and waits for nothing beyond its leaf.
    put(&mut db, &mut ring, &key(1), &value(2, 100)); // hardens the pending commit too
    assert!(db.checkpoint_now().unwrap());
    let start = db.log.lsn_appended();
    db.begin();
    btree::put(db.pool(), &key(other), &value(other, 100)).unwrap();
    assert_eq!(db.pool().pages_in_tx(), 0, "a write of the same value takes no page (no before-image)");
    let wait = commit_appended(&mut db);
    assert_eq!(db.log.lsn_appended(), start, "a write that changes no byte logs nothing");
    assert!(wait <= db.log.lsn_hardened());
    assert_eq!(get(&mut db, &key(other)), Some(value(other, 100)));

    // Pages read from the data file have no barrier of their own: a read of them waits for the
    // page write limit they were written under, never for nothing (a page may reach the disk
    // before its commit is released to clients, e.g. before the mirror hardened it).
    drop(db);
    let mut db = open(dir.path(), &mut ring, 256);
    let hardened = db.log.lsn_hardened();
    let (v, wait) = read_and_wait(&mut db, &key(other));
    assert_eq!(v, Some(value(other, 100)));
    assert!(
        wait > Lsn::ZERO && wait <= hardened,
        "a read of a page from disk waits for {wait:?}, hardened {hardened:?}"
    );
}

/// Lookups do not count the meta page, so what guards a read against an unreleased change of the
/// tree's root is the root page itself: a root split and FLUSHDB, appended and not hardened, make
/// every read wait for them.
#[test]
fn a_read_waits_for_an_unreleased_root_split_and_flushdb() {
    let dir = scratch();
    let mut ring = Ring::new(64).unwrap();
    let mut db = open(dir.path(), &mut ring, 256);
    // Fill the root leaf, hardened, up to the insert that splits it; that one stays unhardened.
    let mut split = None;
    for i in 0..1000 {
        db.begin();
        btree::put(db.pool(), &key(i), &value(i, 100)).unwrap();
        if btree::shape(db.pool()).unwrap().height == 1 {
            db.abort();
            put(&mut db, &mut ring, &key(i), &value(i, 100));
            continue;
        }
        let lsn = commit_appended(&mut db);
        split = Some((i, lsn));
        break;
    }
    let (last, split_lsn) = split.expect("the root leaf split");
    assert!(split_lsn > db.log.lsn_hardened());
    for k in [key(0), key(last), key(last + 1)] {
        assert!(read_and_wait(&mut db, &k).1 >= split_lsn, "a read during an unreleased root split");
    }
    put(&mut db, &mut ring, &key(5000), &value(0, 10)); // hardens the split
    assert!(read_and_wait(&mut db, &key(0)).1 <= db.log.lsn_hardened());

    db.begin();
    btree::clear(db.pool()).unwrap();
    let flush_lsn = commit_appended(&mut db);
    assert!(flush_lsn > db.log.lsn_hardened());
    for k in [key(0), key(last)] {
        assert!(read_and_wait(&mut db, &k).1 >= flush_lsn, "a read during an unreleased FLUSHDB");
    }
}

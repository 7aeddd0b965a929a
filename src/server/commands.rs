//! The commands: what each does to a session and a database, with Redis's replies and errors.
//!
//! Data commands run inside a database transaction (`Database::begin` … `commit`): a single
//! command, or every command of MULTI/EXEC, is one transaction and one commit record. A reply is
//! released to the client only once the log is hardened to its `wait` LSN: the commit for a
//! write, the flush barrier of the pages read for a read (never a write a crash could lose).

use std::collections::HashMap;

use crate::constants::{KEY_SIZE_MAX, VALUE_SIZE_MAX};
use crate::error::Error;
use crate::server::glob;
use crate::server::resp::{Protocol, Reply};
use crate::store::btree;
use crate::store::database::{CommitProgress, Database};
use crate::store::value::{now_ms, StoredValue};
use crate::wal::Lsn;

/// What a connection's commands can see and change about the connection itself.
#[derive(Debug)]
pub struct Session {
    pub id: u64,
    pub db: usize,
    pub protocol: Protocol,
    pub authenticated: bool,
    pub name: Option<Vec<u8>>,
    pub lib_name: Option<Vec<u8>>,
    pub lib_ver: Option<Vec<u8>>,
    /// Commands queued by MULTI (owned copies of their arguments).
    pub multi: Option<Vec<Vec<Vec<u8>>>>,
    pub multi_failed: bool,
    /// A page the next command needs and the cache lacks is read through the ring while the
    /// command waits (`Outcome::ReadPage`), instead of synchronously on the shard thread.
    pub async_page_reads: bool,
}

impl Session {
    pub fn new(id: u64, needs_auth: bool) -> Self {
        Self {
            id,
            db: 0,
            protocol: Protocol::Resp2,
            authenticated: !needs_auth,
            name: None,
            lib_name: None,
            lib_ver: None,
            multi: None,
            multi_failed: false,
            async_page_reads: false,
        }
    }
}

/// Server-wide facts and settings commands read.
pub struct ServerInfo<'a> {
    pub requirepass: Option<&'a str>,
    pub connected_clients: usize,
    pub uptime_s: u64,
    pub tcp_port: u16,
    pub maxclients: usize,
    pub config: &'a [(&'static str, String)],
    /// Every database's figures (published by the shard that owns it).
    pub stats: &'a [crate::server::shards::DbStats],
}

/// SCAN cursors: a cursor number stands for the last key returned.
#[derive(Default)]
pub struct Cursors {
    next_id: u64,
    positions: HashMap<u64, (usize, Vec<u8>)>,
    order: std::collections::VecDeque<u64>,
}

const CURSORS_MAX: usize = 4096;

impl Cursors {
    fn save(&mut self, db: usize, key: Vec<u8>) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.positions.insert(id, (db, key));
        self.order.push_back(id);
        while self.order.len() > CURSORS_MAX {
            if let Some(old) = self.order.pop_front() {
                self.positions.remove(&old);
            }
        }
        id
    }
}

/// The result of one command.
pub enum Outcome {
    /// Send `reply` once database `db`'s log is hardened to `wait`.
    Reply { reply: Reply, db: usize, wait: Lsn },
    /// Send `reply`, then close the connection.
    Close(Reply),
    /// Nothing was done: run the same command again once database `db`'s log is hardened to
    /// `lsn` (the page cache was full of pages waiting for it).
    RetryAfter { db: usize, lsn: Lsn },
    /// Nothing was done: page `page` of database `db` is not cached. Run the same command again
    /// once it is read (`BufferPool::submit_read`).
    ReadPage { db: usize, page: crate::store::page::PageId },
    /// The transaction is partly appended (the log buffer filled): call
    /// `Database::continue_commit` after the next log write, then send `reply`.
    WaitingForSpace { reply: Reply, db: usize },
}

/// Commands that touch no database's data: a mirror copy (RESTORING) answers these, and only
/// these.
pub fn is_connection_command(name: &[u8]) -> bool {
    const NAMES: [&str; 11] =
        ["PING", "ECHO", "HELLO", "AUTH", "SELECT", "QUIT", "INFO", "CLIENT", "COMMAND", "CONFIG", "RESET"];
    NAMES.iter().any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

fn now_reply(reply: Reply) -> Outcome {
    Outcome::Reply { reply, db: 0, wait: Lsn::ZERO }
}

fn err(text: &str) -> Reply {
    Reply::error(text)
}

fn wrong_args(name: &str) -> Reply {
    Reply::error(format!("ERR wrong number of arguments for '{}' command", name.to_ascii_lowercase()))
}

const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
const SYNTAX: &str = "ERR syntax error";

/// Parses an integer as Redis does: optional '-', no '+', no leading zeros, no spaces.
pub fn parse_i64(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    text.parse().ok()
}

/// Arity as Redis's command table states it: positive = exact, negative = at least.
fn arity(name: &str) -> Option<i32> {
    Some(match name {
        "PING" => -1,
        "ECHO" => 2,
        "HELLO" => -1,
        "AUTH" => -2,
        "SELECT" => 2,
        "QUIT" => -1,
        "GET" => 2,
        "SET" => -3,
        "GETSET" => 3,
        "DEL" => -2,
        "EXISTS" => -2,
        "MGET" => -2,
        "MSET" => -3,
        "INCR" | "DECR" => 2,
        "INCRBY" | "DECRBY" => 3,
        "APPEND" => 3,
        "STRLEN" => 2,
        "SCAN" => -2,
        "KEYS" => 2,
        "DBSIZE" => 1,
        "FLUSHDB" => -1,
        "MULTI" | "EXEC" | "DISCARD" => 1,
        "TTL" | "PTTL" | "PERSIST" => 2,
        "EXPIRE" | "PEXPIRE" => -3,
        "INFO" => -1,
        "CONFIG" => -2,
        "COMMAND" => -1,
        "CLIENT" => -2,
        _ => return None,
    })
}

fn is_data_command(name: &str) -> bool {
    matches!(
        name,
        "GET"
            | "SET"
            | "GETSET"
            | "DEL"
            | "EXISTS"
            | "MGET"
            | "MSET"
            | "INCR"
            | "DECR"
            | "INCRBY"
            | "DECRBY"
            | "APPEND"
            | "STRLEN"
            | "TTL"
            | "PTTL"
            | "PERSIST"
            | "EXPIRE"
            | "PEXPIRE"
            | "DBSIZE"
            | "FLUSHDB"
            | "KEYS"
            | "SCAN"
    )
}

fn unknown_command(args: &[&[u8]]) -> Reply {
    let mut text = format!("ERR unknown command '{}', with args beginning with: ", String::from_utf8_lossy(args[0]));
    for a in args.iter().skip(1).take(20) {
        text.push_str(&format!("'{}' ", String::from_utf8_lossy(a)));
    }
    Reply::Error(text)
}

/// Runs one command of `session`.
pub fn execute(
    args: &[&[u8]],
    session: &mut Session,
    dbs: &mut [Option<Database>],
    cursors: &mut Cursors,
    info: &ServerInfo<'_>,
) -> Outcome {
    let name = String::from_utf8_lossy(args[0]).to_ascii_uppercase();
    let Some(arity) = arity(&name) else {
        if session.multi.is_some() {
            session.multi_failed = true;
        }
        return now_reply(unknown_command(args));
    };
    let n = args.len() as i32;
    if (arity > 0 && n != arity) || (arity < 0 && n < -arity) {
        if session.multi.is_some() {
            session.multi_failed = true;
        }
        return now_reply(wrong_args(&name));
    }
    if !session.authenticated && !matches!(name.as_str(), "AUTH" | "HELLO" | "QUIT") {
        return now_reply(err("NOAUTH Authentication required."));
    }
    if let Some(queued) =
        session.multi.as_mut().filter(|_| !matches!(name.as_str(), "EXEC" | "DISCARD" | "MULTI" | "QUIT"))
    {
        if is_data_command(&name) || matches!(name.as_str(), "PING" | "ECHO" | "SELECT") {
            queued.push(args.iter().map(|a| a.to_vec()).collect());
            return now_reply(Reply::Simple("QUEUED".into()));
        }
        session.multi_failed = true;
        return now_reply(err(&format!(
            "ERR Command not allowed inside a transaction: '{}'",
            name.to_ascii_lowercase()
        )));
    }
    match name.as_str() {
        "PING" => now_reply(match args.get(1) {
            Some(msg) if args.len() == 2 => Reply::bulk(*msg),
            Some(_) => wrong_args("ping"),
            None => Reply::Simple("PONG".into()),
        }),
        "ECHO" => now_reply(Reply::bulk(args[1])),
        "QUIT" => Outcome::Close(Reply::ok()),
        "HELLO" => now_reply(hello(args, session, info)),
        "AUTH" => now_reply(auth(&args[1..], session, info)),
        "SELECT" => now_reply(match select_index(args[1], dbs.len()) {
            Ok(i) => {
                session.db = i;
                Reply::ok()
            }
            Err(e) => e,
        }),
        "CLIENT" => now_reply(client(args, session)),
        "COMMAND" => now_reply(command(args)),
        "CONFIG" => now_reply(config(args, info)),
        "INFO" => now_reply(server_info(args, info)),
        "MULTI" => {
            if session.multi.is_some() {
                return now_reply(err("ERR MULTI calls can not be nested"));
            }
            session.multi = Some(Vec::new());
            session.multi_failed = false;
            now_reply(Reply::ok())
        }
        "DISCARD" => now_reply(match session.multi.take() {
            Some(_) => Reply::ok(),
            None => err("ERR DISCARD without MULTI"),
        }),
        "EXEC" => {
            let Some(queued) = session.multi.take() else {
                return now_reply(err("ERR EXEC without MULTI"));
            };
            if std::mem::take(&mut session.multi_failed) {
                return now_reply(err("EXECABORT Transaction discarded because of previous errors."));
            }
            let plan = match exec_plan(&queued, session.db, dbs.len()) {
                Ok(plan) => plan,
                Err(reply) => return now_reply(reply),
            };
            // The server moved the connection to the database the transaction changes.
            debug_assert_eq!(plan.data_db, session.db);
            let db = plan.data_db;
            let cmds: Vec<Vec<&[u8]>> = queued.iter().map(|c| c.iter().map(|a| a.as_slice()).collect()).collect();
            let databases = dbs.len();
            let outcome = transaction(owned(dbs, db), db, &cmds, cursors, Some(databases), session.async_page_reads);
            if matches!(outcome, Outcome::RetryAfter { .. } | Outcome::ReadPage { .. }) {
                // EXEC runs again later: keep the queued commands.
                session.multi = Some(queued);
            } else {
                session.db = plan.final_db;
            }
            outcome
        }
        _ => {
            let db = session.db;
            transaction(owned(dbs, db), db, &[args.to_vec()], cursors, None, session.async_page_reads)
        }
    }
}

/// The database `SELECT index` names, or the error Redis gives.
fn select_index(index: &[u8], databases: usize) -> Result<usize, Reply> {
    match parse_i64(index) {
        Some(i) if i >= 0 && (i as usize) < databases => Ok(i as usize),
        Some(_) => Err(err("ERR DB index is out of range")),
        None => Err(err(NOT_INTEGER)),
    }
}

/// Where a MULTI/EXEC transaction runs: SELECT may be queued inside it (as Redis allows), and it
/// changes the database of the commands after it and of the connection after EXEC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecPlan {
    /// The one database whose data the transaction's commands touch (the session's database if
    /// they touch none): the transaction is one commit in its log.
    pub data_db: usize,
    /// The database selected after EXEC.
    pub final_db: usize,
}

/// Plans EXEC of `queued`, starting in database `db`. Each database has its own log, so a
/// transaction whose data commands touch two databases could not be one atomic commit: it is
/// refused (EXECABORT), and nothing of it runs.
pub fn exec_plan(queued: &[Vec<Vec<u8>>], db: usize, databases: usize) -> Result<ExecPlan, Reply> {
    let mut current = db;
    let mut data_db: Option<usize> = None;
    for cmd in queued {
        let name = String::from_utf8_lossy(&cmd[0]).to_ascii_uppercase();
        if name == "SELECT" {
            if let Ok(i) = select_index(&cmd[1], databases) {
                current = i;
            }
        } else if is_data_command(&name) {
            match data_db {
                Some(d) if d != current => {
                    return Err(err(&format!(
                        "EXECABORT Transaction discarded: its commands touch databases {d} and {current}; each database has its own log, so one transaction cannot change both"
                    )));
                }
                _ => data_db = Some(current),
            }
        }
    }
    Ok(ExecPlan { data_db: data_db.unwrap_or(db), final_db: current })
}

/// The database an EXEC of `session`'s queued transaction runs in, if it differs from the
/// session's: the server first moves the connection there (to the shard that owns it).
pub fn exec_database(session: &Session, databases: usize) -> Option<usize> {
    let queued = session.multi.as_ref().filter(|_| !session.multi_failed)?;
    let plan = exec_plan(queued, session.db, databases).ok()?;
    (plan.data_db != session.db).then_some(plan.data_db)
}

/// The session's database; the server hands a connection to the database's shard before it runs
/// a command there, so it is always this shard's.
fn owned(dbs: &mut [Option<Database>], db: usize) -> &mut Database {
    dbs[db].as_mut().expect("commands run on the shard that owns their database")
}

/// Runs data commands as one transaction and commits it. `exec` is set for EXEC (with the
/// number of databases): the replies form an array, and queued SELECTs (`exec_plan` placed the
/// transaction in its one database) answer in place.
fn transaction(
    database: &mut Database,
    db: usize,
    cmds: &[Vec<&[u8]>],
    cursors: &mut Cursors,
    exec: Option<usize>,
    async_page_reads: bool,
) -> Outcome {
    database.pool().set_async_misses(async_page_reads);
    let outcome = run_transaction(database, db, cmds, cursors, exec);
    database.pool().set_async_misses(false);
    outcome
}

fn run_transaction(
    database: &mut Database,
    db: usize,
    cmds: &[Vec<&[u8]>],
    cursors: &mut Cursors,
    exec: Option<usize>,
) -> Outcome {
    if database.is_failed() {
        return now_reply(err(
            "ERR the database failed (a write or flush error of its log or data file is fatal); it accepts no commands until restarted",
        ));
    }
    if database.commit_in_progress() {
        return now_reply(err("ERR internal: a transaction is still being appended"));
    }
    database.begin();
    let mut replies = Vec::with_capacity(cmds.len());
    let mut barrier = Lsn::ZERO;
    for args in cmds {
        if let Some(databases) = exec.filter(|_| args[0].eq_ignore_ascii_case(b"SELECT")) {
            replies.push(select_index(args[1], databases).map_or_else(|e| e, |_| Reply::ok()));
            continue;
        }
        match data_command(database, db, args, cursors, &mut barrier) {
            Ok(reply) => replies.push(reply),
            Err(Error::CacheFull { needs_hardened: Some(lsn) }) => {
                // The cache is full of pages the log has not hardened yet: undo, and run the
                // command again once the log gets there (the connection keeps it unconsumed).
                database.abort();
                return Outcome::RetryAfter { db, lsn };
            }
            Err(Error::PageNotCached(page)) => {
                // Undone; the server reads the page through the ring and runs it again.
                database.abort();
                return Outcome::ReadPage { db, page };
            }
            Err(e) => {
                // A failure inside the engine (corrupt page, a transaction larger than the
                // cache): nothing of the transaction is kept.
                database.abort();
                return now_reply(Reply::error(format!("ERR {e}")));
            }
        }
    }
    let reply = if exec.is_some() { Reply::Array(replies) } else { replies.pop().unwrap_or(Reply::Null) };
    match database.commit() {
        Ok(CommitProgress::Appended(lsn)) => Outcome::Reply { reply, db, wait: lsn.max(barrier) },
        Ok(CommitProgress::WaitingForSpace) => Outcome::WaitingForSpace { reply, db },
        Err(e) => now_reply(Reply::error(format!("ERR {e}"))),
    }
}

/// Reads `key`'s live value (expired values read as absent). The reply waits for the pages the
/// lookup read (`BufferPool::observed`, through `Database::commit`).
fn load(database: &mut Database, key: &[u8]) -> Result<Option<StoredValue>, Error> {
    if key.len() > KEY_SIZE_MAX {
        return Ok(None);
    }
    let Some(bytes) = btree::get(database.pool(), key)? else { return Ok(None) };
    let value = StoredValue::decode(&bytes)
        .ok_or_else(|| Error::TreeCorrupt(format!("value of key {:?} is malformed", String::from_utf8_lossy(key))))?;
    Ok(if value.is_expired(now_ms()) { None } else { Some(value) })
}

/// Whether `key` exists and has not expired, reading only its value's header (KEYS and SCAN
/// must not read whole 16 MiB values to list names). Their replies wait for the last commit.
fn is_live(database: &mut Database, key: &[u8]) -> Result<bool, Error> {
    let head = btree::get_prefix(database.pool(), key, crate::store::value::STORED_VALUE_OVERHEAD_MAX)?;
    Ok(head.is_some_and(|h| crate::store::value::expiry_of(&h).is_none_or(|at| at > now_ms())))
}

fn store(database: &mut Database, key: &[u8], value: &StoredValue) -> Result<(), Error> {
    btree::put(database.pool(), key, &value.encode()).map(|_| ())
}

fn data_command(
    database: &mut Database,
    db: usize,
    args: &[&[u8]],
    cursors: &mut Cursors,
    barrier: &mut Lsn,
) -> Result<Reply, Error> {
    let name = String::from_utf8_lossy(args[0]).to_ascii_uppercase();
    let key = args.get(1).copied().unwrap_or_default();
    Ok(match name.as_str() {
        "PING" => args.get(1).map(|m| Reply::bulk(*m)).unwrap_or(Reply::Simple("PONG".into())),
        "ECHO" => Reply::bulk(args[1]),
        "GET" => match load(database, key)? {
            Some(v) => Reply::Bulk(v.data),
            None => Reply::Null,
        },
        "SET" => return set(database, args),
        "GETSET" => {
            if args[2].len() > VALUE_SIZE_MAX {
                return Ok(value_too_large());
            }
            let old = load(database, key)?;
            store(database, key, &StoredValue::new(args[2].to_vec(), None))?;
            old.map(|v| Reply::Bulk(v.data)).unwrap_or(Reply::Null)
        }
        "DEL" => {
            let mut n = 0;
            for k in &args[1..] {
                if load(database, k)?.is_some() {
                    n += 1;
                }
                if k.len() <= KEY_SIZE_MAX {
                    btree::delete(database.pool(), k)?;
                }
            }
            Reply::Integer(n)
        }
        "EXISTS" => {
            let mut n = 0;
            for k in &args[1..] {
                n += load(database, k)?.is_some() as i64;
            }
            Reply::Integer(n)
        }
        "MGET" => {
            let mut out = Vec::with_capacity(args.len() - 1);
            for k in &args[1..] {
                out.push(load(database, k)?.map(|v| Reply::Bulk(v.data)).unwrap_or(Reply::Null));
            }
            Reply::Array(out)
        }
        "MSET" => {
            if args.len() % 2 != 1 {
                return Ok(wrong_args("mset"));
            }
            if let Some(e) = args[1..].chunks(2).find_map(|kv| limit_error(kv[0], kv[1])) {
                return Ok(e);
            }
            for kv in args[1..].chunks(2) {
                store(database, kv[0], &StoredValue::new(kv[1].to_vec(), None))?;
            }
            Reply::ok()
        }
        "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
            let by = match args.get(2) {
                Some(b) => match parse_i64(b) {
                    Some(v) => v,
                    None => return Ok(err(NOT_INTEGER)),
                },
                None => 1,
            };
            let by = if name.starts_with("DECR") { by.checked_neg() } else { Some(by) };
            let Some(by) = by else { return Ok(err(NOT_INTEGER)) };
            let old = load(database, key)?;
            let current = match &old {
                Some(v) => match parse_i64(&v.data) {
                    Some(n) => n,
                    None => return Ok(err(NOT_INTEGER)),
                },
                None => 0,
            };
            let Some(next) = current.checked_add(by) else {
                return Ok(err("ERR increment or decrement would overflow"));
            };
            if key.len() > KEY_SIZE_MAX {
                return Ok(key_too_large());
            }
            store(database, key, &StoredValue::new(next.to_string().into_bytes(), old.and_then(|v| v.expire_at_ms)))?;
            Reply::Integer(next)
        }
        "APPEND" => {
            let mut value = load(database, key)?.unwrap_or(StoredValue::new(Vec::new(), None));
            if value.data.len() + args[2].len() > VALUE_SIZE_MAX {
                return Ok(value_too_large());
            }
            if key.len() > KEY_SIZE_MAX {
                return Ok(key_too_large());
            }
            value.data.extend_from_slice(args[2]);
            store(database, key, &value)?;
            Reply::Integer(value.data.len() as i64)
        }
        "STRLEN" => Reply::Integer(load(database, key)?.map(|v| v.data.len() as i64).unwrap_or(0)),
        "TTL" | "PTTL" => match load(database, key)? {
            None => Reply::Integer(-2),
            Some(StoredValue { expire_at_ms: None, .. }) => Reply::Integer(-1),
            Some(StoredValue { expire_at_ms: Some(at), .. }) => {
                let left = at.saturating_sub(now_ms()) as i64;
                Reply::Integer(if name == "TTL" { (left + 500) / 1000 } else { left })
            }
        },
        "PERSIST" => match load(database, key)? {
            Some(mut v) if v.expire_at_ms.is_some() => {
                v.expire_at_ms = None;
                store(database, key, &v)?;
                Reply::Integer(1)
            }
            _ => Reply::Integer(0),
        },
        "EXPIRE" | "PEXPIRE" => return expire(database, args, name == "EXPIRE"),
        "DBSIZE" => {
            *barrier = (*barrier).max(database.last_commit());
            Reply::Integer(btree::meta(database.pool())?.key_count as i64)
        }
        "FLUSHDB" => {
            if args.len() > 2
                || args.get(1).is_some_and(|a| !a.eq_ignore_ascii_case(b"ASYNC") && !a.eq_ignore_ascii_case(b"SYNC"))
            {
                return Ok(err(SYNTAX));
            }
            btree::clear(database.pool())?;
            Reply::ok()
        }
        "KEYS" => {
            *barrier = (*barrier).max(database.last_commit());
            let mut out = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let (keys, next) = btree::keys_after(database.pool(), after.as_deref(), 1024)?;
                for k in keys {
                    if glob::matches(args[1], &k) && is_live(database, &k)? {
                        out.push(Reply::Bulk(k));
                    }
                }
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            Reply::Array(out)
        }
        "SCAN" => return scan(database, db, args, cursors, barrier),
        _ => unknown_command(args),
    })
}

fn key_too_large() -> Reply {
    err(&format!("ERR key is larger than the limit of {KEY_SIZE_MAX} bytes"))
}

fn value_too_large() -> Reply {
    err(&format!("ERR value is larger than the limit of {VALUE_SIZE_MAX} bytes"))
}

fn limit_error(key: &[u8], value: &[u8]) -> Option<Reply> {
    if key.len() > KEY_SIZE_MAX {
        Some(key_too_large())
    } else if value.len() > VALUE_SIZE_MAX {
        Some(value_too_large())
    } else {
        None
    }
}

fn set(database: &mut Database, args: &[&[u8]]) -> Result<Reply, Error> {
    let (key, data) = (args[1], args[2]);
    let (mut nx, mut xx, mut get, mut keep_ttl) = (false, false, false, false);
    let mut expire_at: Option<u64> = None;
    let mut i = 3;
    while i < args.len() {
        let opt = String::from_utf8_lossy(args[i]).to_ascii_uppercase();
        match opt.as_str() {
            "NX" if !xx => nx = true,
            "XX" if !nx => xx = true,
            "GET" => get = true,
            "KEEPTTL" if expire_at.is_none() => keep_ttl = true,
            "EX" | "PX" | "EXAT" | "PXAT" if expire_at.is_none() && !keep_ttl && i + 1 < args.len() => {
                let Some(n) = parse_i64(args[i + 1]) else { return Ok(err(NOT_INTEGER)) };
                if n <= 0 {
                    return Ok(err("ERR invalid expire time in 'set' command"));
                }
                let n = n as u64;
                let at = match opt.as_str() {
                    "EX" => n.checked_mul(1000).and_then(|ms| ms.checked_add(now_ms())),
                    "PX" => n.checked_add(now_ms()),
                    "EXAT" => n.checked_mul(1000),
                    _ => Some(n),
                };
                let Some(at) = at.filter(|&at| at <= i64::MAX as u64) else {
                    return Ok(err("ERR invalid expire time in 'set' command"));
                };
                expire_at = Some(at);
                i += 1;
            }
            _ => return Ok(err(SYNTAX)),
        }
        i += 1;
    }
    if let Some(e) = limit_error(key, data) {
        return Ok(e);
    }
    if !(nx || xx || get || keep_ttl) {
        // A plain SET needs nothing of the old value: its reply waits for its own commit, which
        // covers every earlier change of the key.
        store(database, key, &StoredValue::new(data.to_vec(), expire_at))?;
        return Ok(Reply::ok());
    }
    let old = load(database, key)?;
    let old_reply = || old.clone().map(|v| Reply::Bulk(v.data)).unwrap_or(Reply::Null);
    if (nx && old.is_some()) || (xx && old.is_none()) {
        return Ok(if get { old_reply() } else { Reply::Null });
    }
    let expiry = if keep_ttl { old.as_ref().and_then(|v| v.expire_at_ms) } else { expire_at };
    store(database, key, &StoredValue::new(data.to_vec(), expiry))?;
    Ok(if get { old_reply() } else { Reply::ok() })
}

fn expire(database: &mut Database, args: &[&[u8]], seconds: bool) -> Result<Reply, Error> {
    let Some(n) = parse_i64(args[2]) else { return Ok(err(NOT_INTEGER)) };
    let flag = args.get(3).map(|f| String::from_utf8_lossy(f).to_ascii_uppercase());
    if args.len() > 4 || flag.as_deref().is_some_and(|f| !matches!(f, "NX" | "XX" | "GT" | "LT")) {
        return Ok(err(SYNTAX));
    }
    let Some(mut value) = load(database, args[1])? else { return Ok(Reply::Integer(0)) };
    let delta_ms = if seconds { n.checked_mul(1000) } else { Some(n) };
    let Some(at) = delta_ms.and_then(|d| (now_ms() as i64).checked_add(d)) else {
        return Ok(err(&format!(
            "ERR invalid expire time in '{}' command",
            if seconds { "expire" } else { "pexpire" }
        )));
    };
    let current = value.expire_at_ms;
    let allowed = match flag.as_deref() {
        Some("NX") => current.is_none(),
        Some("XX") => current.is_some(),
        Some("GT") => current.is_some_and(|c| at > c as i64),
        Some("LT") => current.is_none_or(|c| at < c as i64),
        _ => true,
    };
    if !allowed {
        return Ok(Reply::Integer(0));
    }
    if at <= now_ms() as i64 {
        btree::delete(database.pool(), args[1])?;
    } else {
        value.expire_at_ms = Some(at as u64);
        store(database, args[1], &value)?;
    }
    Ok(Reply::Integer(1))
}

fn scan(
    database: &mut Database,
    db: usize,
    args: &[&[u8]],
    cursors: &mut Cursors,
    barrier: &mut Lsn,
) -> Result<Reply, Error> {
    let Some(cursor) = std::str::from_utf8(args[1]).ok().and_then(|s| s.parse::<u64>().ok()) else {
        return Ok(err("ERR invalid cursor"));
    };
    let (mut pattern, mut count): (Option<&[u8]>, usize) = (None, 10);
    let mut i = 2;
    while i < args.len() {
        let opt = String::from_utf8_lossy(args[i]).to_ascii_uppercase();
        match (opt.as_str(), args.get(i + 1)) {
            ("MATCH", Some(p)) => pattern = Some(p),
            ("COUNT", Some(c)) => match parse_i64(c) {
                Some(c) if c >= 1 => count = c as usize,
                Some(_) => return Ok(err(SYNTAX)),
                None => return Ok(err(NOT_INTEGER)),
            },
            ("TYPE", Some(_)) => {}
            _ => return Ok(err(SYNTAX)),
        }
        i += 2;
    }
    *barrier = (*barrier).max(database.last_commit());
    let after = match cursor {
        0 => None,
        c => match cursors.positions.remove(&c) {
            Some((cursor_db, key)) if cursor_db == db => Some(key),
            // Unknown, already used, or forgotten after CURSORS_MAX newer ones: say so rather
            // than pretend the iteration ended.
            _ => return Ok(err("ERR invalid cursor")),
        },
    };
    let (keys, next) = btree::keys_after(database.pool(), after.as_deref(), count)?;
    let mut out = Vec::new();
    for k in keys {
        if pattern.is_none_or(|p| glob::matches(p, &k)) && is_live(database, &k)? {
            out.push(Reply::Bulk(k));
        }
    }
    let next_cursor = match next {
        Some(key) => cursors.save(db, key),
        None => 0,
    };
    Ok(Reply::Array(vec![Reply::bulk(next_cursor.to_string()), Reply::Array(out)]))
}

fn hello(args: &[&[u8]], session: &mut Session, info: &ServerInfo<'_>) -> Reply {
    let mut i = 1;
    let mut protocol = session.protocol;
    if let Some(v) = args.get(1) {
        match parse_i64(v) {
            Some(2) => protocol = Protocol::Resp2,
            Some(3) => protocol = Protocol::Resp3,
            _ => return err("NOPROTO unsupported protocol version"),
        }
        i = 2;
    }
    while i < args.len() {
        let opt = String::from_utf8_lossy(args[i]).to_ascii_uppercase();
        match opt.as_str() {
            "AUTH" if i + 2 < args.len() => {
                if let Reply::Error(e) = auth(&args[i + 1..i + 3], session, info) {
                    return Reply::Error(e);
                }
                i += 3;
            }
            "SETNAME" if i + 1 < args.len() => {
                session.name = Some(args[i + 1].to_vec());
                i += 2;
            }
            _ => return err(SYNTAX),
        }
    }
    if session.authenticated {
        session.protocol = protocol;
    } else {
        return err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
    }
    let proto = if session.protocol == Protocol::Resp3 { 3 } else { 2 };
    Reply::Map(vec![
        (Reply::bulk("server"), Reply::bulk("redis")),
        (Reply::bulk("version"), Reply::bulk(crate::server::REDIS_COMPAT_VERSION)),
        (Reply::bulk("proto"), Reply::Integer(proto)),
        (Reply::bulk("id"), Reply::Integer(session.id as i64)),
        (Reply::bulk("mode"), Reply::bulk("standalone")),
        (Reply::bulk("role"), Reply::bulk("master")),
        (Reply::bulk("modules"), Reply::Array(Vec::new())),
    ])
}

fn auth(args: &[&[u8]], session: &mut Session, info: &ServerInfo<'_>) -> Reply {
    let (user, pass) = match args {
        [pass] => (&b"default"[..], *pass),
        [user, pass] => (*user, *pass),
        _ => return err(SYNTAX),
    };
    match info.requirepass {
        None => err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"),
        Some(expected) if user == b"default" && constant_time_eq(pass, expected.as_bytes()) => {
            session.authenticated = true;
            Reply::ok()
        }
        Some(_) => err("WRONGPASS invalid username-password pair or user is disabled."),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn client(args: &[&[u8]], session: &mut Session) -> Reply {
    let sub = String::from_utf8_lossy(args[1]).to_ascii_uppercase();
    match (sub.as_str(), args.len()) {
        ("ID", 2) => Reply::Integer(session.id as i64),
        ("GETNAME", 2) => session.name.clone().map(Reply::Bulk).unwrap_or(Reply::Null),
        ("SETNAME", 3) => {
            if args[2].iter().any(|&b| b == b' ' || b == b'\n') {
                return err("ERR Client names cannot contain spaces, newlines or special characters.");
            }
            session.name = if args[2].is_empty() { None } else { Some(args[2].to_vec()) };
            Reply::ok()
        }
        ("SETINFO", 4) => {
            match String::from_utf8_lossy(args[2]).to_ascii_uppercase().as_str() {
                "LIB-NAME" => session.lib_name = Some(args[3].to_vec()),
                "LIB-VER" => session.lib_ver = Some(args[3].to_vec()),
                _ => return err(&format!("ERR Unrecognized option '{}'", String::from_utf8_lossy(args[2]))),
            }
            Reply::ok()
        }
        _ => err(&format!("ERR unknown subcommand '{}'. Try CLIENT HELP.", String::from_utf8_lossy(args[1]))),
    }
}

const COMMANDS: &[&str] = &[
    "PING", "ECHO", "HELLO", "AUTH", "SELECT", "QUIT", "GET", "SET", "GETSET", "DEL", "EXISTS", "MGET", "MSET", "INCR",
    "DECR", "INCRBY", "DECRBY", "APPEND", "STRLEN", "SCAN", "KEYS", "DBSIZE", "FLUSHDB", "MULTI", "EXEC", "DISCARD",
    "TTL", "PTTL", "PERSIST", "EXPIRE", "PEXPIRE", "INFO", "CONFIG", "COMMAND", "CLIENT",
];

fn command(args: &[&[u8]]) -> Reply {
    let sub = args.get(1).map(|a| String::from_utf8_lossy(a).to_ascii_uppercase());
    match sub.as_deref() {
        Some("COUNT") => Reply::Integer(COMMANDS.len() as i64),
        Some("DOCS") => {
            let wanted: Vec<String> =
                args[2..].iter().map(|a| String::from_utf8_lossy(a).to_ascii_uppercase()).collect();
            let docs = COMMANDS
                .iter()
                .filter(|c| wanted.is_empty() || wanted.iter().any(|w| w == *c))
                .map(|c| {
                    (
                        Reply::bulk(c.to_ascii_lowercase()),
                        Reply::Map(vec![(Reply::bulk("summary"), Reply::bulk(format!("{c} (mirrorlog)")))]),
                    )
                })
                .collect();
            Reply::Map(docs)
        }
        None => Reply::Array(
            COMMANDS
                .iter()
                .map(|c| {
                    let a = arity(c).unwrap_or(-1);
                    Reply::Array(vec![
                        Reply::bulk(c.to_ascii_lowercase()),
                        Reply::Integer(a as i64),
                        Reply::Array(Vec::new()),
                        Reply::Integer(0),
                        Reply::Integer(0),
                        Reply::Integer(0),
                    ])
                })
                .collect(),
        ),
        Some(other) => err(&format!("ERR unknown subcommand '{other}'. Try COMMAND HELP.")),
    }
}

fn config(args: &[&[u8]], info: &ServerInfo<'_>) -> Reply {
    let sub = String::from_utf8_lossy(args[1]).to_ascii_uppercase();
    if sub != "GET" || args.len() < 3 {
        return err(&format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'",
            String::from_utf8_lossy(args[1])
        ));
    }
    let mut pairs = Vec::new();
    for pattern in &args[2..] {
        for (name, value) in info.config {
            if glob::matches(&pattern.to_ascii_lowercase(), name.as_bytes())
                && !pairs.iter().any(|(n, _): &(Reply, Reply)| *n == Reply::bulk(*name))
            {
                pairs.push((Reply::bulk(*name), Reply::bulk(value.clone())));
            }
        }
    }
    Reply::Map(pairs)
}

fn server_info(args: &[&[u8]], info: &ServerInfo<'_>) -> Reply {
    use std::sync::atomic::Ordering::Relaxed;
    let wanted: Vec<String> = args[1..].iter().map(|a| String::from_utf8_lossy(a).to_ascii_lowercase()).collect();
    let all = wanted.is_empty() || wanted.iter().any(|w| w == "all" || w == "everything" || w == "default");
    let want = |s: &str| all || wanted.iter().any(|w| w == s);
    let mut text = String::new();
    if want("server") {
        text.push_str(&format!(
            "# Server\r\nredis_version:{}\r\nmirrorlog_version:{}\r\nredis_mode:standalone\r\nos:{} {}\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n",
            crate::server::REDIS_COMPAT_VERSION,
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::env::consts::ARCH,
            std::process::id(),
            info.tcp_port,
            info.uptime_s
        ));
    }
    if want("clients") {
        text.push_str(&format!(
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n",
            info.connected_clients, info.maxclients
        ));
    }
    if want("persistence") {
        text.push_str("# Persistence\r\nloading:0\r\nwal:on\r\n");
        for (i, s) in info.stats.iter().enumerate() {
            text.push_str(&format!(
                "db{i}_lsn_appended:{}\r\ndb{i}_lsn_hardened:{}\r\ndb{i}_log_writes:{}\r\ndb{i}_log_records:{}\r\ndb{i}_log_write_us:{}\r\ndb{i}_checkpoint_lsn:{}\r\ndb{i}_checkpoints:{}\r\n",
                s.lsn_appended.load(Relaxed),
                s.lsn_hardened.load(Relaxed),
                s.log_writes.load(Relaxed),
                s.log_records.load(Relaxed),
                s.log_write_micros.load(Relaxed),
                s.checkpoint_lsn.load(Relaxed),
                s.checkpoints.load(Relaxed)
            ));
            text.push_str(&format!(
                "db{i}_checkpoint_pages_left:{}\r\ndb{i}_cache_misses:{}\r\ndb{i}_page_reads_async:{}\r\ndb{i}_page_writes:{}\r\ndb{i}_eviction_writes:{}\r\ndb{i}_cleaning_writes:{}\r\n",
                s.checkpoint_pages_left.load(Relaxed),
                s.cache_misses.load(Relaxed),
                s.page_reads_async.load(Relaxed),
                s.page_writes.load(Relaxed),
                s.eviction_writes.load(Relaxed),
                s.cleaning_writes.load(Relaxed)
            ));
        }
        text.push_str("\r\n");
    }
    if want("mirroring") {
        text.push_str("# Mirroring\r\n");
        let mut mirrored = 0;
        for (i, s) in info.stats.iter().enumerate() {
            let line = s.mirroring.lock().map(|l| l.clone()).unwrap_or_default();
            if !line.is_empty() {
                mirrored += 1;
                text.push_str(&format!("db{i}:{line}\r\n"));
            }
        }
        text.push_str(&format!("mirrored_databases:{mirrored}\r\n\r\n"));
    }
    if want("keyspace") {
        text.push_str("# Keyspace\r\n");
        for (i, s) in info.stats.iter().enumerate() {
            let keys = s.keys.load(Relaxed);
            if keys > 0 {
                text.push_str(&format!("db{i}:keys={keys},expires=0,avg_ttl=0\r\n"));
            }
        }
        text.push_str("\r\n");
    }
    Reply::Bulk(text.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::parse_i64;

    #[test]
    fn integers_as_redis_parses_them() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        for bad in [&b""[..], b"+1", b"01", b" 1", b"1.5", b"9223372036854775808", b"-", b"abc"] {
            assert_eq!(parse_i64(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}

//! `mirrorlog ctl …`: administers a server's mirroring over RESP, with the same `MIRROR …`
//! commands redis-cli can send (`redis-cli -p 6379 MIRROR STATUS`).

use std::net::SocketAddr;
use std::time::Duration;

use crate::client::{Client, Value};
use crate::error::{Error, Result};

/// One administrative request to a server's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtlRequest {
    Status,
    SetPartner(String),
    SetWitness(String),
    SetSafety(String),
    Suspend,
    Resume,
    Remove,
    Failover,
    ForceService,
}

impl CtlRequest {
    /// The `MIRROR …` command for this request.
    pub fn command(&self) -> Vec<Vec<u8>> {
        let words: Vec<&str> = match self {
            CtlRequest::Status => vec!["MIRROR", "STATUS"],
            CtlRequest::SetPartner(p) => vec!["MIRROR", "SET", "PARTNER", p],
            CtlRequest::SetWitness(w) => vec!["MIRROR", "SET", "WITNESS", w],
            CtlRequest::SetSafety(s) => vec!["MIRROR", "SET", "SAFETY", s],
            CtlRequest::Suspend => vec!["MIRROR", "SUSPEND"],
            CtlRequest::Resume => vec!["MIRROR", "RESUME"],
            CtlRequest::Remove => vec!["MIRROR", "OFF"],
            CtlRequest::Failover => vec!["MIRROR", "FAILOVER"],
            CtlRequest::ForceService => vec!["MIRROR", "FORCE_SERVICE"],
        };
        words.into_iter().map(|w| w.as_bytes().to_vec()).collect()
    }
}

/// Sends `request` for database `db` to the server at `server`; returns the text to print.
pub fn run(server: SocketAddr, password: Option<&str>, db: usize, request: &CtlRequest) -> Result<String> {
    let io = |e: std::io::Error| Error::io(format!("server {server}"), e);
    let mut client = Client::connect(server, Duration::from_secs(10)).map_err(io)?;
    let check = |v: Value| match v {
        Value::Error(e) => Err(Error::Mirroring(e)),
        other => Ok(other),
    };
    if let Some(password) = password {
        check(client.command(&[b"AUTH", password.as_bytes()]).map_err(io)?)?;
    }
    check(client.command(&[b"SELECT", db.to_string().as_bytes()]).map_err(io)?)?;
    let command = request.command();
    let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
    match check(client.command(&args).map_err(io)?)? {
        Value::Bulk(text) => Ok(String::from_utf8_lossy(&text).replace("\r\n", "\n")),
        Value::Simple(s) => Ok(s),
        other => Ok(format!("{other:?}")),
    }
}

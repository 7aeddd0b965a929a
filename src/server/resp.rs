//! RESP, the Redis protocol: parsing client commands and encoding replies, for RESP2 and RESP3.
//!
//! Commands arrive as arrays of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`, what every client
//! library and redis-cli send) or as inline commands (`PING\r\n`, what a person types over
//! telnet). The parser never copies: it returns the argument ranges inside the connection's
//! buffer, or says it needs more bytes. Every length is checked against a limit before anything
//! is allocated or sliced; errors carry Redis's own wording ("Protocol error: …"), and the
//! connection that sent them is closed after the error is written, as Redis does.
//! Reference: <https://redis.io/docs/latest/develop/reference/protocol-spec/>

use std::ops::Range;

use crate::constants::{RESP_ARGS_MAX, RESP_BULK_LEN_MAX, RESP_INLINE_LEN_MAX};

/// A parsed command: argument ranges inside the buffer it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Command {
    pub args: Vec<Range<usize>>,
}

impl Command {
    pub fn arg<'a>(&self, buf: &'a [u8], i: usize) -> &'a [u8] {
        &buf[self.args[i].clone()]
    }

    pub fn len(&self) -> usize {
        self.args.len()
    }

    pub fn is_empty(&self) -> bool {
        self.args.is_empty()
    }
}

/// Why a buffer does not hold a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The command is not complete yet; read more bytes.
    Incomplete,
    /// The bytes break the protocol; the text follows "-ERR " in the reply.
    Protocol(String),
}

fn protocol(detail: impl Into<String>) -> ParseError {
    ParseError::Protocol(format!("Protocol error: {}", detail.into()))
}

/// Finds "\r\n" at or after `from`, looking no further than `limit` bytes; `too_long` names the
/// error when the line is longer.
fn find_crlf(buf: &[u8], from: usize, limit: usize, too_long: &str) -> Result<usize, ParseError> {
    let end = buf.len().min(from.saturating_add(limit));
    match buf[from.min(end)..end].windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(from + i),
        None if buf.len() > end => Err(protocol(too_long)),
        None => Err(ParseError::Incomplete),
    }
}

/// Parses a decimal integer line (after the type byte) as Redis does: optional '-', digits only.
fn parse_int(bytes: &[u8]) -> Option<i64> {
    let (negative, digits) = match bytes.first() {
        Some(b'-') => (true, &bytes[1..]),
        _ => (false, bytes),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits.iter().fold(0i64, |acc, d| acc * 10 + (d - b'0') as i64);
    Some(if negative { -value } else { value })
}

/// Parses one command at the start of `buf`. Returns the command and the bytes it used.
pub fn parse_command(buf: &[u8]) -> Result<(Command, usize), ParseError> {
    match buf.first() {
        None => Err(ParseError::Incomplete),
        Some(b'*') => parse_multibulk(buf),
        Some(_) => parse_inline(buf),
    }
}

fn parse_multibulk(buf: &[u8]) -> Result<(Command, usize), ParseError> {
    let line_end = find_crlf(buf, 1, 32, "too big mbulk count string")?;
    let count = parse_int(&buf[1..line_end]).ok_or_else(|| protocol("invalid multibulk length"))?;
    if count > RESP_ARGS_MAX as i64 {
        return Err(protocol("invalid multibulk length"));
    }
    let mut at = line_end + 2;
    if count <= 0 {
        // "*0\r\n" and "*-1\r\n" are empty commands: skipped, as Redis does.
        return Ok((Command::default(), at));
    }
    let mut args = Vec::with_capacity((count as usize).min(64));
    for _ in 0..count {
        match buf.get(at) {
            None => return Err(ParseError::Incomplete),
            Some(b'$') => {}
            Some(&other) => return Err(protocol(format!("expected '$', got '{}'", other as char))),
        }
        let len_end = find_crlf(buf, at + 1, 32, "too big bulk count string")?;
        let len = parse_int(&buf[at + 1..len_end]).ok_or_else(|| protocol("invalid bulk length"))?;
        if len < 0 || len > RESP_BULK_LEN_MAX as i64 {
            return Err(protocol("invalid bulk length"));
        }
        let start = len_end + 2;
        let end = start + len as usize;
        if buf.len() < end + 2 {
            return Err(ParseError::Incomplete);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(protocol("bulk string not terminated by CRLF"));
        }
        args.push(start..end);
        at = end + 2;
    }
    Ok((Command { args }, at))
}

fn parse_inline(buf: &[u8]) -> Result<(Command, usize), ParseError> {
    let newline = match buf.iter().take(RESP_INLINE_LEN_MAX + 1).position(|&b| b == b'\n') {
        Some(i) => i,
        None if buf.len() > RESP_INLINE_LEN_MAX => return Err(protocol("too big inline request")),
        None => return Err(ParseError::Incomplete),
    };
    let line_end = if newline > 0 && buf[newline - 1] == b'\r' { newline - 1 } else { newline };
    let mut args = Vec::new();
    let mut i = 0;
    let line = &buf[..line_end];
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            break;
        }
        if line[i] == b'"' || line[i] == b'\'' {
            // Quoted arguments are kept verbatim between the quotes (no escapes are decoded).
            let quote = line[i];
            let start = i + 1;
            let close = line[start..]
                .iter()
                .position(|&b| b == quote)
                .ok_or_else(|| protocol("unbalanced quotes in request"))?;
            let end = start + close;
            if end + 1 < line.len() && !line[end + 1].is_ascii_whitespace() {
                return Err(protocol("unbalanced quotes in request"));
            }
            args.push(start..end);
            i = end + 1;
        } else {
            let start = i;
            while i < line.len() && !line[i].is_ascii_whitespace() {
                i += 1;
            }
            args.push(start..i);
        }
        if args.len() > RESP_ARGS_MAX {
            return Err(protocol("too many arguments in inline request"));
        }
    }
    Ok((Command { args }, newline + 1))
}

/// The protocol version a connection speaks (HELLO switches it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Resp2,
    Resp3,
}

/// A reply, encoded according to the connection's protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    /// A missing value: `$-1` in RESP2, `_` in RESP3.
    Null,
    /// A missing array (EXEC after a failed WATCH, for example): `*-1` in RESP2, `_` in RESP3.
    NullArray,
    Array(Vec<Reply>),
    /// RESP3 map; a flat array of alternating keys and values in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// RESP3 boolean; the integer 1 or 0 in RESP2.
    Bool(bool),
    /// RESP3 double; a bulk string in RESP2.
    Double(f64),
}

impl Reply {
    pub fn ok() -> Self {
        Reply::Simple("OK".into())
    }

    pub fn error(text: impl Into<String>) -> Self {
        Reply::Error(text.into())
    }

    pub fn bulk(bytes: impl Into<Vec<u8>>) -> Self {
        Reply::Bulk(bytes.into())
    }

    /// Appends the encoding of this reply to `out`.
    pub fn encode(&self, protocol: Protocol, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(s) => line(out, b'+', sanitize(s).as_bytes()),
            Reply::Error(s) => line(out, b'-', sanitize(s).as_bytes()),
            Reply::Integer(n) => line(out, b':', n.to_string().as_bytes()),
            Reply::Bulk(bytes) => {
                line(out, b'$', bytes.len().to_string().as_bytes());
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Null => match protocol {
                Protocol::Resp2 => out.extend_from_slice(b"$-1\r\n"),
                Protocol::Resp3 => out.extend_from_slice(b"_\r\n"),
            },
            Reply::NullArray => match protocol {
                Protocol::Resp2 => out.extend_from_slice(b"*-1\r\n"),
                Protocol::Resp3 => out.extend_from_slice(b"_\r\n"),
            },
            Reply::Array(items) => {
                line(out, b'*', items.len().to_string().as_bytes());
                items.iter().for_each(|item| item.encode(protocol, out));
            }
            Reply::Map(pairs) => {
                match protocol {
                    Protocol::Resp2 => line(out, b'*', (pairs.len() * 2).to_string().as_bytes()),
                    Protocol::Resp3 => line(out, b'%', pairs.len().to_string().as_bytes()),
                }
                for (k, v) in pairs {
                    k.encode(protocol, out);
                    v.encode(protocol, out);
                }
            }
            Reply::Bool(b) => match protocol {
                Protocol::Resp2 => line(out, b':', if *b { b"1" } else { b"0" }),
                Protocol::Resp3 => line(out, b'#', if *b { b"t" } else { b"f" }),
            },
            Reply::Double(d) => {
                let text = format_double(*d);
                match protocol {
                    Protocol::Resp2 => Reply::Bulk(text.into_bytes()).encode(protocol, out),
                    Protocol::Resp3 => line(out, b',', text.as_bytes()),
                }
            }
        }
    }
}

fn line(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    out.push(kind);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

/// Simple strings and errors cannot hold CR or LF.
fn sanitize(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\r', '\n']) {
        std::borrow::Cow::Owned(s.replace(['\r', '\n'], " "))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

fn format_double(d: f64) -> String {
    if d.is_infinite() {
        if d > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else if d.is_nan() {
        "nan".into()
    } else {
        format!("{d}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(buf: &[u8]) -> Vec<Vec<u8>> {
        let (cmd, used) = parse_command(buf).unwrap();
        assert_eq!(used, buf.len());
        cmd.args.iter().map(|r| buf[r.clone()].to_vec()).collect()
    }

    #[test]
    fn multibulk_commands() {
        assert_eq!(args(b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"), vec![b"GET".to_vec(), b"key".to_vec()]);
        assert_eq!(args(b"*1\r\n$0\r\n\r\n"), vec![Vec::<u8>::new()]);
        assert_eq!(
            args(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n"),
            vec![b"SET".to_vec(), b"k".to_vec(), b"a\r\nb".to_vec()]
        );
    }

    #[test]
    fn every_prefix_of_a_command_is_incomplete() {
        let full = b"*3\r\n$3\r\nSET\r\n$5\r\nhello\r\n$5\r\nworld\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse_command(&full[..cut]), Err(ParseError::Incomplete), "cut at {cut}");
        }
        assert!(parse_command(full).is_ok());
    }

    #[test]
    fn pipelined_commands_parse_one_at_a_time() {
        let buf = b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\nPING\r\n";
        let (_, a) = parse_command(buf).unwrap();
        let (_, b) = parse_command(&buf[a..]).unwrap();
        let (cmd, c) = parse_command(&buf[a + b..]).unwrap();
        assert_eq!(cmd.arg(&buf[a + b..], 0), b"PING");
        assert_eq!(a + b + c, buf.len());
    }

    #[test]
    fn inline_commands() {
        assert_eq!(args(b"PING\r\n"), vec![b"PING".to_vec()]);
        assert_eq!(args(b"SET  k   v\n"), vec![b"SET".to_vec(), b"k".to_vec(), b"v".to_vec()]);
        assert_eq!(args(b"SET k \"a b\"\r\n"), vec![b"SET".to_vec(), b"k".to_vec(), b"a b".to_vec()]);
        assert_eq!(args(b"\r\n"), Vec::<Vec<u8>>::new());
        assert_eq!(parse_command(b"PIN"), Err(ParseError::Incomplete));
    }

    #[test]
    fn protocol_errors_use_redis_wording() {
        let err = |b: &[u8]| match parse_command(b) {
            Err(ParseError::Protocol(s)) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(err(b"*x\r\n"), "Protocol error: invalid multibulk length");
        assert_eq!(err(b"*1\r\n$-5\r\n"), "Protocol error: invalid bulk length");
        assert_eq!(err(b"*1\r\n:1\r\n"), "Protocol error: expected '$', got ':'");
        assert_eq!(err(b"*1\r\n$1\r\nab\r\n"), "Protocol error: bulk string not terminated by CRLF");
        assert_eq!(err(b"SET k \"ab\n"), "Protocol error: unbalanced quotes in request");
        assert_eq!(err(format!("*{}\r\n", RESP_ARGS_MAX + 1).as_bytes()), "Protocol error: invalid multibulk length");
        assert_eq!(err(&vec![b'a'; RESP_INLINE_LEN_MAX + 1]), "Protocol error: too big inline request");
        assert_eq!(err(b"*1\r\n$99999999999999999999\r\n"), "Protocol error: invalid bulk length");
    }

    #[test]
    fn an_oversized_bulk_length_is_refused_before_any_allocation() {
        let header = format!("*1\r\n${}\r\n", RESP_BULK_LEN_MAX + 1);
        assert!(matches!(parse_command(header.as_bytes()), Err(ParseError::Protocol(_))));
        // At the limit the parser just waits for the bytes.
        let header = format!("*1\r\n${}\r\n", RESP_BULK_LEN_MAX);
        assert_eq!(parse_command(header.as_bytes()), Err(ParseError::Incomplete));
    }

    #[test]
    fn a_length_line_without_end_is_refused() {
        assert!(matches!(parse_command(&[b'*'; 100]), Err(ParseError::Protocol(_))));
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x1234_5678_9abc_def1u64;
        for _ in 0..20_000 {
            let mut buf = Vec::new();
            for _ in 0..(state % 40) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                buf.push(b"*$\r\n0123456789-abc \"'"[(state % 21) as usize]);
            }
            let _ = parse_command(&buf);
        }
    }

    #[test]
    fn replies_in_both_protocols() {
        let enc = |r: Reply, p| {
            let mut out = Vec::new();
            r.encode(p, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(enc(Reply::ok(), Protocol::Resp2), "+OK\r\n");
        assert_eq!(enc(Reply::error("ERR bad\r\nthing"), Protocol::Resp2), "-ERR bad  thing\r\n");
        assert_eq!(enc(Reply::Integer(-3), Protocol::Resp2), ":-3\r\n");
        assert_eq!(enc(Reply::bulk("hi"), Protocol::Resp2), "$2\r\nhi\r\n");
        assert_eq!(enc(Reply::Null, Protocol::Resp2), "$-1\r\n");
        assert_eq!(enc(Reply::Null, Protocol::Resp3), "_\r\n");
        assert_eq!(enc(Reply::NullArray, Protocol::Resp2), "*-1\r\n");
        let map = Reply::Map(vec![(Reply::bulk("a"), Reply::Integer(1))]);
        assert_eq!(enc(map.clone(), Protocol::Resp2), "*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(map, Protocol::Resp3), "%1\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(Reply::Bool(true), Protocol::Resp3), "#t\r\n");
        assert_eq!(enc(Reply::Bool(false), Protocol::Resp2), ":0\r\n");
        assert_eq!(enc(Reply::Double(1.5), Protocol::Resp3), ",1.5\r\n");
        assert_eq!(enc(Reply::Double(1.5), Protocol::Resp2), "$3\r\n1.5\r\n");
        assert_eq!(enc(Reply::Array(vec![Reply::Integer(1), Reply::Null]), Protocol::Resp2), "*2\r\n:1\r\n$-1\r\n");
    }
}

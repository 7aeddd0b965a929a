//! A small blocking RESP client: tests, tools and load generators talk to a server with it.
//! `failover` builds the failover-partner client on it.

pub mod failover;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A reply as the server sent it (RESP2 and the RESP3 types the server uses).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Value>),
}

impl Value {
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(b) => Some(b),
            Value::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }
}

pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        Ok(Self { reader: BufReader::new(stream.try_clone()?), writer: stream })
    }

    /// Encodes one command as an array of bulk strings.
    pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Sends commands back to back (a pipeline) and reads their replies in order.
    pub fn pipeline(&mut self, commands: &[Vec<&[u8]>]) -> std::io::Result<Vec<Value>> {
        let mut out = Vec::new();
        for c in commands {
            Self::encode(c, &mut out);
        }
        self.writer.write_all(&out)?;
        (0..commands.len()).map(|_| self.read_value()).collect()
    }

    pub fn command(&mut self, args: &[&[u8]]) -> std::io::Result<Value> {
        Ok(self.pipeline(&[args.to_vec()])?.remove(0))
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    pub fn read_value(&mut self) -> std::io::Result<Value> {
        let line = self.read_line()?;
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad reply line {line:?}"));
        let (kind, rest) = line.split_at(1.min(line.len()));
        Ok(match kind {
            "+" => Value::Simple(rest.to_string()),
            "-" => Value::Error(rest.to_string()),
            ":" => Value::Integer(rest.parse().map_err(|_| bad())?),
            "_" => Value::Nil,
            "$" => {
                let len: i64 = rest.parse().map_err(|_| bad())?;
                if len < 0 {
                    return Ok(Value::Nil);
                }
                let mut buf = vec![0u8; len as usize + 2];
                std::io::Read::read_exact(&mut self.reader, &mut buf)?;
                buf.truncate(len as usize);
                Value::Bulk(buf)
            }
            "*" | "%" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                if n < 0 {
                    return Ok(Value::Nil);
                }
                let count = if kind == "%" { 2 * n } else { n };
                Value::Array((0..count).map(|_| self.read_value()).collect::<std::io::Result<_>>()?)
            }
            _ => return Err(bad()),
        })
    }
}

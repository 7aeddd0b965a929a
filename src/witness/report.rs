//! The witness's two frames: a partner's REPORT and the witness's ANSWER (bodies, little-endian).
//!
//! ```text
//! REPORT  header: db id, role sequence (epoch), lsn_from = lsn_to = report number
//!         body:   role u8 (1 principal, 2 mirror), synchronized u8, exposed u8, wants_failover u8,
//!                 own endpoint, partner endpoint, client (RESP) address: each len u16 + UTF-8
//! ANSWER  header: lsn_to = the report number answered
//!         body:   exposure_recorded u8, granted role sequence u64 (0: none), role sequence u64
//! ```
//! Decoding never panics on any bytes.

use crate::witness::state::{Answer, Report, ReportRole};

/// A report and the two endpoints that name its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportBody {
    pub report: Report,
    pub own_endpoint: String,
    pub partner_endpoint: String,
    /// Where clients reach the reporting server (RESP): what Sentinel clients are told.
    pub client_addr: String,
}

const ENDPOINT_LEN_MAX: usize = 256;

pub fn encode_report(body: &ReportBody) -> Vec<u8> {
    let r = &body.report;
    let mut out = vec![
        match r.role {
            ReportRole::Principal => 1,
            ReportRole::Mirror => 2,
        },
        r.synchronized as u8,
        r.exposed as u8,
        r.wants_failover as u8,
    ];
    for s in [&body.own_endpoint, &body.partner_endpoint, &body.client_addr] {
        let bytes = &s.as_bytes()[..s.len().min(ENDPOINT_LEN_MAX)];
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

pub fn decode_report(role_sequence: u64, bytes: &[u8]) -> Result<ReportBody, String> {
    let head = bytes.get(..4).ok_or("a report shorter than its fixed part")?;
    let role = match head[0] {
        1 => ReportRole::Principal,
        2 => ReportRole::Mirror,
        other => return Err(format!("unknown role {other} in a report")),
    };
    let flag = |b: u8| match b {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(format!("flag byte {b} in a report")),
    };
    let report = Report {
        role,
        role_sequence,
        synchronized: flag(head[1])?,
        exposed: flag(head[2])?,
        wants_failover: flag(head[3])?,
    };
    let mut rest = &bytes[4..];
    let mut text = || -> Result<String, String> {
        let len = rest.get(..2).ok_or("a report cut in an endpoint length")?;
        let len = u16::from_le_bytes([len[0], len[1]]) as usize;
        if len > ENDPOINT_LEN_MAX {
            return Err("an endpoint longer than 256 bytes".into());
        }
        let s = rest.get(2..2 + len).ok_or("a report cut in an endpoint")?;
        let s = String::from_utf8(s.to_vec()).map_err(|_| "an endpoint that is not UTF-8".to_string())?;
        rest = &rest[2 + len..];
        Ok(s)
    };
    let own_endpoint = text()?;
    let partner_endpoint = text()?;
    let client_addr = text()?;
    if !rest.is_empty() {
        return Err("trailing bytes after a report".into());
    }
    Ok(ReportBody { report, own_endpoint, partner_endpoint, client_addr })
}

pub fn encode_answer(answer: &Answer) -> Vec<u8> {
    let mut out = vec![answer.exposure_recorded as u8];
    out.extend_from_slice(&answer.granted.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&answer.role_sequence.to_le_bytes());
    out
}

pub fn decode_answer(bytes: &[u8]) -> Result<Answer, String> {
    if bytes.len() != 17 || bytes[0] > 1 {
        return Err(format!("a witness answer of {} bytes", bytes.len()));
    }
    let granted = u64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
    Ok(Answer {
        exposure_recorded: bytes[0] == 1,
        granted: (granted != 0).then_some(granted),
        role_sequence: u64::from_le_bytes(bytes[9..17].try_into().expect("8 bytes")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_garbage_is_an_error() {
        let body = ReportBody {
            report: Report {
                role: ReportRole::Mirror,
                role_sequence: 4,
                synchronized: true,
                exposed: false,
                wants_failover: true,
            },
            own_endpoint: "127.0.0.1:5023".into(),
            partner_endpoint: "127.0.0.1:5022".into(),
            client_addr: "127.0.0.1:6380".into(),
        };
        assert_eq!(decode_report(4, &encode_report(&body)), Ok(body));
        let answer = Answer { exposure_recorded: true, granted: Some(5), role_sequence: 5 };
        assert_eq!(decode_answer(&encode_answer(&answer)), Ok(answer));
        let mut state = 11u64;
        for len in 0..100 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = decode_report(1, &bytes);
            let _ = decode_answer(&bytes);
        }
    }
}

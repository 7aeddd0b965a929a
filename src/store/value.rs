//! How a stored value is laid out in the B+tree: a flags byte, an optional absolute expiry time
//! (milliseconds since the Unix epoch, so the log carries expiry as an absolute time and the
//! mirror expires at the same moment), then the data.

const HAS_EXPIRY: u8 = 1;

/// Bytes the encoding adds to a value at most (flags and expiry).
pub const STORED_VALUE_OVERHEAD_MAX: usize = 9;

/// A stored value, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredValue {
    pub data: Vec<u8>,
    pub expire_at_ms: Option<u64>,
}

impl StoredValue {
    pub fn new(data: Vec<u8>, expire_at_ms: Option<u64>) -> Self {
        Self { data, expire_at_ms }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 9);
        match self.expire_at_ms {
            Some(at) => {
                out.push(HAS_EXPIRY);
                out.extend_from_slice(&at.to_le_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(&self.data);
        out
    }

    /// Decodes stored bytes; `None` if they are malformed (reported as corruption by callers).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        match bytes.first()? {
            0 => Some(Self { data: bytes[1..].to_vec(), expire_at_ms: None }),
            &HAS_EXPIRY => {
                let at = u64::from_le_bytes(bytes.get(1..9)?.try_into().ok()?);
                Some(Self { data: bytes[9..].to_vec(), expire_at_ms: Some(at) })
            }
            _ => None,
        }
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expire_at_ms.is_some_and(|at| at <= now_ms)
    }
}

/// The expiry time of stored bytes, from their first `STORED_VALUE_OVERHEAD_MAX` bytes.
pub fn expiry_of(head: &[u8]) -> Option<u64> {
    match head.first()? {
        &HAS_EXPIRY => Some(u64::from_le_bytes(head.get(1..9)?.try_into().ok()?)),
        _ => None,
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for v in [StoredValue::new(b"abc".to_vec(), None), StoredValue::new(vec![], Some(1_700_000_000_000))] {
            assert_eq!(StoredValue::decode(&v.encode()), Some(v));
        }
        assert_eq!(StoredValue::decode(&[]), None);
        assert_eq!(StoredValue::decode(&[1, 2, 3]), None);
        assert_eq!(StoredValue::decode(&[7]), None);
        assert!(StoredValue::new(vec![], Some(5)).is_expired(5));
        assert!(!StoredValue::new(vec![], Some(5)).is_expired(4));
    }
}

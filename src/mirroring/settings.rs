//! A database's mirroring settings, persisted in `dbN/mirroring`: its role, its partner, the
//! safety level and whether the session is suspended. Written before the server acts on a change
//! (a suspension survives a restart), replaced atomically (temporary file, fsync, rename, fsync
//! of the directory) and checksummed: a damaged file is an error, never a silent default.
//!
//! Format: text lines `name value`, the last line `crc32c <hex>` over every byte before it.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::mirroring::session::SafetyLevel;

const FILE_NAME: &str = "mirroring";
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Principal,
    Mirror,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Principal => "principal",
            Role::Mirror => "mirror",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirroringSettings {
    pub role: Role,
    /// The partner's endpoint, `tcp://HOST:PORT` (the principal dials it; on the mirror it names
    /// the principal, for the status view).
    pub partner: String,
    pub safety: SafetyLevel,
    /// Why the session is suspended, if it is.
    pub suspended: Option<String>,
    /// The role sequence (epoch) this database acts in; it only grows, and is written here
    /// before the database acts in a new role.
    pub role_sequence: u64,
    /// A newer principal exists (at this role sequence): this copy takes neither writes nor
    /// reads until it rejoins as a mirror.
    pub fenced_by: Option<u64>,
    /// The witness, `tcp://HOST:PORT`, if the session has one.
    pub witness: Option<String>,
    /// The partner's own endpoint as it reports it (`HOST:PORT`; the partner may be dialed
    /// through another address): half of the session's name at the witness.
    pub partner_endpoint: Option<String>,
    /// Where this database's role sequence began (the failover LSN, when it became principal).
    pub role_start_lsn: Option<u64>,
    /// What a rejoin cut from this database's log: LSN range, transactions, the file keeping it.
    pub discarded: Option<String>,
}

pub fn path(db_dir: &Path) -> PathBuf {
    db_dir.join(FILE_NAME)
}

/// Parses `tcp://HOST:PORT` into a socket address (loopback names resolve locally).
pub fn parse_partner(text: &str) -> Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let rest = text
        .strip_prefix("tcp://")
        .ok_or_else(|| Error::Config(format!("partner {text:?}: expected tcp://HOST:PORT")))?;
    rest.to_socket_addrs()
        .map_err(|e| Error::Config(format!("partner {text:?}: {e}")))?
        .next()
        .ok_or_else(|| Error::Config(format!("partner {text:?}: no address")))
}

impl MirroringSettings {
    /// Settings of a session in `role` at `role_sequence`, not suspended, fenced or rejoined.
    pub fn new(role: Role, partner: String, safety: SafetyLevel, role_sequence: u64, witness: Option<String>) -> Self {
        Self {
            role,
            partner,
            safety,
            suspended: None,
            role_sequence,
            fenced_by: None,
            witness,
            partner_endpoint: None,
            role_start_lsn: None,
            discarded: None,
        }
    }

    fn encode(&self) -> String {
        let mut text = format!(
            "version {FORMAT_VERSION}\nrole {}\npartner {}\nsafety {}\nrole_sequence {}\n",
            self.role, self.partner, self.safety, self.role_sequence
        );
        if let Some(by) = self.fenced_by {
            text.push_str(&format!("fenced_by {by}\n"));
        }
        if let Some(witness) = &self.witness {
            text.push_str(&format!("witness {witness}\n"));
        }
        if let Some(endpoint) = &self.partner_endpoint {
            text.push_str(&format!("partner_endpoint {endpoint}\n"));
        }
        if let Some(lsn) = self.role_start_lsn {
            text.push_str(&format!("role_start_lsn {lsn}\n"));
        }
        if let Some(discarded) = &self.discarded {
            text.push_str(&format!("discarded {}\n", discarded.replace('\n', " ")));
        }
        if let Some(reason) = &self.suspended {
            text.push_str(&format!("suspended {}\n", reason.replace('\n', " ")));
        }
        let crc = crc32c::crc32c(text.as_bytes());
        text.push_str(&format!("crc32c {crc:08x}\n"));
        text
    }

    fn decode(text: &str, file: &Path) -> Result<Self> {
        let bad = |detail: &str| Error::Config(format!("{}: {detail}", file.display()));
        let crc_at = text.rfind("crc32c ").ok_or_else(|| bad("no checksum line (damaged file)"))?;
        let (body, crc_line) = text.split_at(crc_at);
        let stored = u32::from_str_radix(crc_line.trim_start_matches("crc32c ").trim(), 16)
            .map_err(|_| bad("unreadable checksum"))?;
        if stored != crc32c::crc32c(body.as_bytes()) {
            return Err(bad("checksum mismatch (damaged file)"));
        }
        let (mut role, mut partner, mut safety, mut suspended) = (None, None, None, None);
        let (mut role_sequence, mut fenced_by, mut witness, mut partner_endpoint) = (1u64, None, None, None);
        let (mut role_start_lsn, mut discarded) = (None, None);
        for line in body.lines() {
            let (name, value) = line.split_once(' ').unwrap_or((line, ""));
            match name {
                "version" if value == FORMAT_VERSION.to_string() => {}
                "version" => return Err(bad(&format!("format version {value} is not supported"))),
                "role" => {
                    role = Some(match value {
                        "principal" => Role::Principal,
                        "mirror" => Role::Mirror,
                        _ => return Err(bad("unknown role")),
                    })
                }
                "partner" => partner = Some(value.to_string()),
                "safety" => safety = Some(SafetyLevel::parse(value).ok_or_else(|| bad("unknown safety level"))?),
                "suspended" => suspended = Some(value.to_string()),
                "role_sequence" => role_sequence = value.parse().map_err(|_| bad("unreadable role sequence"))?,
                "witness" => witness = Some(value.to_string()),
                "partner_endpoint" => partner_endpoint = Some(value.to_string()),
                "role_start_lsn" => role_start_lsn = Some(value.parse().map_err(|_| bad("unreadable role_start_lsn"))?),
                "discarded" => discarded = Some(value.to_string()),
                "fenced_by" => fenced_by = Some(value.parse().map_err(|_| bad("unreadable fenced_by"))?),
                _ => return Err(bad(&format!("unknown setting {name:?}"))),
            }
        }
        Ok(Self {
            role: role.ok_or_else(|| bad("no role"))?,
            partner: partner.ok_or_else(|| bad("no partner"))?,
            safety: safety.ok_or_else(|| bad("no safety level"))?,
            suspended,
            role_sequence,
            fenced_by,
            witness,
            partner_endpoint,
            role_start_lsn,
            discarded,
        })
    }

    /// The settings of the database in `db_dir`, or `None` if it is not mirrored.
    pub fn load(db_dir: &Path) -> Result<Option<Self>> {
        let file = path(db_dir);
        match std::fs::read_to_string(&file) {
            Ok(text) => Self::decode(&text, &file).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read {}", file.display()), e)),
        }
    }

    /// Replaces the persisted settings atomically and durably.
    pub fn store(&self, db_dir: &Path) -> Result<()> {
        let file = path(db_dir);
        let tmp = file.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp).context(|| format!("create {}", tmp.display()))?;
            f.write_all(self.encode().as_bytes()).context(|| format!("write {}", tmp.display()))?;
            f.sync_all().context(|| format!("fsync {}", tmp.display()))?;
        }
        std::fs::rename(&tmp, &file).context(|| format!("rename {}", tmp.display()))?;
        crate::io::file::sync_dir(db_dir)
    }

    /// Removes the settings (the session ended).
    pub fn remove(db_dir: &Path) -> Result<()> {
        let file = path(db_dir);
        match std::fs::remove_file(&file) {
            Ok(()) => crate::io::file::sync_dir(db_dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", file.display()), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_detected() {
        let dir = tempfile::tempdir_in(".").unwrap();
        assert_eq!(MirroringSettings::load(dir.path()).unwrap(), None);
        let settings = MirroringSettings {
            role: Role::Principal,
            partner: "tcp://127.0.0.1:5022".into(),
            safety: SafetyLevel::Full,
            suspended: Some("by an administrator".into()),
            role_sequence: 3,
            fenced_by: Some(4),
            witness: Some("tcp://127.0.0.1:5024".into()),
            partner_endpoint: Some("127.0.0.1:5023".into()),
            role_start_lsn: Some(8192),
            discarded: Some("lsn 100 to lsn 200, 1 transaction(s), in discarded-100-200.log".into()),
        };
        settings.store(dir.path()).unwrap();
        assert_eq!(MirroringSettings::load(dir.path()).unwrap(), Some(settings.clone()));
        let file = path(dir.path());
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, text.replace("FULL", "OFF")).unwrap();
        let err = MirroringSettings::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        MirroringSettings::remove(dir.path()).unwrap();
        assert_eq!(MirroringSettings::load(dir.path()).unwrap(), None);
    }

    #[test]
    fn partner_addresses() {
        assert_eq!(parse_partner("tcp://127.0.0.1:5022").unwrap(), "127.0.0.1:5022".parse().unwrap());
        assert!(parse_partner("127.0.0.1:5022").is_err());
        assert!(parse_partner("tcp://nonsense").is_err());
    }
}

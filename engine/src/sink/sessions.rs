//! The saved-sessions file, `{data_dir}/sessions.json`: per shard the session id, the resume
//! URL and the last sequence number that reached the bot or the spill, so that a restarted
//! shardgate resumes every session instead of identifying.
//!
//! Written atomically (a temporary file, fsync, rename, fsync of the directory): a crash leaves
//! the old file or the new one, never half of one. Read at startup; a file that cannot be read
//! or parsed is reported and left in place (no state destroyed), and every shard identifies.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::shard::Session;

/// Format version written in the file.
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SessionsError {
    #[error("cannot {operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a sessions file shardgate wrote: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSessions {
    pub version: u32,
    /// The shard count the sessions were identified with; sessions of another count are not
    /// resumed (Discord would reject them after a reshard).
    pub total_shards: u32,
    pub shards: BTreeMap<u32, Session>,
    /// Set when a reshard switched to these sessions: the count it came from. A start with that
    /// count configured keeps this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resharded_from: Option<u32>,
}

impl SavedSessions {
    pub fn new(total_shards: u32) -> Self {
        SavedSessions {
            version: VERSION,
            total_shards,
            shards: BTreeMap::new(),
            resharded_from: None,
        }
    }
}

/// Reads `path`; `Ok(None)` when there is no file.
pub fn load(path: &Path) -> Result<Option<SavedSessions>, SessionsError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SessionsError::Io {
                operation: "read",
                path: path.to_owned(),
                source,
            });
        }
    };
    let saved: SavedSessions =
        serde_json::from_slice(&text).map_err(|error| SessionsError::Invalid {
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
    if saved.version != VERSION {
        return Err(SessionsError::Invalid {
            path: path.to_owned(),
            reason: format!("version {} (this shardgate reads {VERSION})", saved.version),
        });
    }
    Ok(Some(saved))
}

/// Replaces `path` with `sessions`, atomically.
pub fn save(path: &Path, sessions: &SavedSessions) -> Result<(), SessionsError> {
    let io = |operation: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| SessionsError::Io {
            operation,
            path,
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let temporary = path.with_extension("json.tmp");
    let body = serde_json::to_vec(sessions).map_err(|error| SessionsError::Invalid {
        path: path.to_owned(),
        reason: error.to_string(),
    })?;
    {
        let mut file = std::fs::File::create(&temporary).map_err(io("create", &temporary))?;
        file.write_all(&body).map_err(io("write", &temporary))?;
        file.sync_all().map_err(io("fsync", &temporary))?;
    }
    std::fs::rename(&temporary, path).map_err(io("rename into", path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("shardgate-sessions-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn saves_and_loads_atomically() {
        let dir = scratch("roundtrip");
        let path = dir.join("sessions.json");
        assert!(load(&path).unwrap().is_none());
        let mut sessions = SavedSessions::new(16);
        sessions.shards.insert(
            3,
            Session {
                session_id: "abc".into(),
                resume_url: Some("wss://resume.example".into()),
                sequence: 42,
            },
        );
        save(&path, &sessions).unwrap();
        assert_eq!(load(&path).unwrap(), Some(sessions.clone()));
        sessions.shards.get_mut(&3).unwrap().sequence = 43;
        save(&path, &sessions).unwrap();
        assert_eq!(load(&path).unwrap().unwrap().shards[&3].sequence, 43);
        assert!(!path.with_extension("json.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_broken_file_is_reported_and_kept() {
        let dir = scratch("broken");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sessions.json");
        std::fs::write(&path, b"{\"version\":1,\"total_sh").unwrap();
        let error = load(&path).unwrap_err();
        assert!(
            matches!(&error, SessionsError::Invalid { path: p, .. } if p == &path),
            "{error}"
        );
        std::fs::write(&path, br#"{"version":9,"total_shards":1,"shards":{}}"#).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("version 9"));
        assert!(path.exists(), "left in place");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

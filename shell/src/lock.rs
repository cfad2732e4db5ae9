//! One tesserad per data dir: an advisory lock on `<data-dir>/LOCK`, held for the process's
//! life, with the holder's pid written in it for the error message.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("data dir {dir} is in use by another tesserad{holder}; stop it or choose another --data-dir")]
    Held { dir: String, holder: String },
    #[error("cannot lock data dir {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
}

/// Dropping it releases the lock.
pub struct DirLock {
    _file: File,
}

pub fn lock_data_dir(dir: &Path) -> Result<DirLock, LockError> {
    let d = dir.display().to_string();
    let ioerr = |source| LockError::Io { dir: d.clone(), source };
    std::fs::create_dir_all(dir).map_err(ioerr)?;
    let mut file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join("LOCK")).map_err(ioerr)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            let holder = if pid.is_empty() { String::new() } else { format!(" (pid {pid})") };
            return Err(LockError::Held { dir: d, holder });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(ioerr(e)),
    }
    file.set_len(0).map_err(ioerr)?;
    file.seek(SeekFrom::Start(0)).map_err(ioerr)?;
    write!(file, "{}", std::process::id()).map_err(ioerr)?;
    Ok(DirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_with_pid() {
        let dir = tempfile::tempdir().unwrap();
        let _held = lock_data_dir(dir.path()).unwrap();
        let err = lock_data_dir(dir.path()).err().unwrap().to_string();
        assert!(err.contains("in use by another tesserad"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
    }
}

//! Writes that survive a power cut, and the room left for them: every
//! state file (the job journal, its index) is replaced atomically through
//! here, and every folder sync and free-space question goes through here.
//! The firmware folders themselves are written only by the writer actor,
//! through folder handles (see `writer.rs`), with the same steps.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use crate::writer::TEMP_PREFIX;

/// A synced temporary file in `dir` holding `bytes`, ready to be renamed.
fn stage_bytes(dir: &Path, bytes: &[u8]) -> io::Result<tempfile::NamedTempFile> {
    let mut staged = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(".tmp")
        .tempfile_in(dir)?;
    staged.write_all(bytes)?;
    staged.as_file().sync_all()?;
    Ok(staged)
}

/// Replaces `path` with `bytes` atomically and durably. Blocking; for small
/// state files (the job journal).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    stage_bytes(dir, bytes)?
        .persist(path)
        .map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Makes the names in `dir` (a rename, a creation, a removal) durable.
/// Blocking.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Bytes free for an unprivileged writer on the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// [`free_space`] for a folder that may not exist yet (its nearest existing
/// ancestor is asked), off the async thread.
pub async fn free_space_of(dir: &Path) -> io::Result<u64> {
    let mut probe = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        while !probe.exists() && probe.pop() {}
        free_space(&probe)
    })
    .await
    .unwrap_or_else(|e| Err(io::Error::other(e)))
}

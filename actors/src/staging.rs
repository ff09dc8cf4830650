//! What gator-ota knows about its staging files: their names (beside the
//! image, so the final rename is atomic, and derived from the image's path,
//! so a restarted job finds its own), which file found at such a name may
//! be written through, and how a staged or installed image is read back.
//! The writer actor creates, fills, renames and removes them; the job reads
//! their length to resume and their bytes to check a signature; at start-up
//! [`sweep_temporaries`] removes what a killed process left.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::hashes::{Checks, Digests, hash_file, hex};
use crate::paths::{ConfinedPath, DirHandle};

/// Temporary and staging files start with this, so they are easy to spot.
pub const TEMP_PREFIX: &str = ".gator-ota-";

/// The staging file of `image`: in the same folder, so the final rename is
/// atomic, and named after the destination, so a restarted job finds it.
pub fn staging_path(image: &ConfinedPath) -> PathBuf {
    image.full().with_file_name(staging_name(image))
}

pub(crate) fn staging_name(image: &ConfinedPath) -> OsString {
    let digest = Sha256::digest(image.full().as_os_str().as_encoded_bytes());
    format!("{TEMP_PREFIX}{}.part", &hex(&digest)[..16]).into()
}

/// Opens the staging file: created exclusively, or, when one is already
/// there (a resume), used only if it is a plain file with one link, owned by
/// us. Anything else at the name (a hard link to a file elsewhere, a file of
/// another user, a link) is never written through: it is removed and a
/// fresh file created.
pub(crate) fn open_staging(dir: &DirHandle, name: &OsStr) -> io::Result<File> {
    let shown = dir.path().join(name);
    for _ in 0..3 {
        match dir.create_new(name) {
            Ok(file) => {
                dir.sync()?;
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        match dir.open_existing(name, true) {
            Ok(file) => match untrusted(&file)? {
                None => return Ok(file),
                Some(why) => {
                    warn!(path = %shown.display(), reason = %why, "refusing the staging file found at this name; removing it and starting the image afresh");
                }
            },
            Err(e) if e.raw_os_error() == Some(ELOOP) => {
                warn!(path = %shown.display(), "a symbolic link stands at the staging file's name; removing it");
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        dir.remove(name)?;
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{}: another file keeps appearing at the staging file's name",
            shown.display()
        ),
    ))
}

const ELOOP: i32 = rustix::io::Errno::LOOP.raw_os_error();

/// Why an existing staging file must not be used, if it must not.
fn untrusted(file: &File) -> io::Result<Option<String>> {
    let meta = file.metadata()?;
    let ours = rustix::process::geteuid().as_raw();
    Ok(if !meta.file_type().is_file() {
        Some("it is not a regular file".into())
    } else if meta.nlink() > 1 {
        Some(format!(
            "it has {} links, so writing it would change a file by another name, maybe outside the allowed folders",
            meta.nlink()
        ))
    } else if meta.uid() != ours {
        Some(format!(
            "it is owned by uid {}, not by gator-ota (uid {ours})",
            meta.uid()
        ))
    } else {
        None
    })
}

/// Size and `checks` of the image installed at `image`, read through a
/// folder handle and without following a link. Blocking; streams the file.
pub fn hash_installed(image: &ConfinedPath, checks: Checks) -> io::Result<(u64, Digests)> {
    let dir = image.open_parent(false)?;
    let mut file = open_regular(&dir, image.file_name())?;
    let len = file.metadata()?.len();
    Ok((len, hash_file(&mut file, len, checks)?.finish()))
}

/// The staged image, for reading (its signature is checked). Blocking.
pub fn open_staged(image: &ConfinedPath) -> io::Result<File> {
    let dir = image.open_parent(false)?;
    open_regular(&dir, &staging_name(image))
}

fn open_regular(dir: &DirHandle, name: &OsStr) -> io::Result<File> {
    let file = dir.open_existing(name, false)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", dir.path().join(name).display()),
        ));
    }
    Ok(file)
}

/// Removes temporaries a killed process left behind (never at a destination,
/// but they take space). Staging files (`.part`) stay: the unfinished job
/// they belong to resumes from them, and a job that ends removes its own.
pub(crate) fn sweep_temporaries(dir: &Path, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if kind.is_file() && name.starts_with(TEMP_PREFIX) && name.ends_with(".tmp") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    info!(path = %entry.path().display(), "removed a leftover temporary file")
                }
                Err(e) => {
                    warn!(path = %entry.path().display(), error = %e, "cannot remove a leftover temporary file")
                }
            }
        } else if kind.is_dir() && depth > 0 {
            sweep_temporaries(&entry.path(), depth - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_removes_temporaries_and_keeps_staging_files() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("images");
        std::fs::create_dir(&sub).unwrap();
        let tmp = sub.join(format!("{TEMP_PREFIX}0123456789abcdef.tmp"));
        let part = sub.join(format!("{TEMP_PREFIX}0123456789abcdef.part"));
        let other = sub.join("firmware.tmp");
        for f in [&tmp, &part, &other] {
            std::fs::write(f, b"x").unwrap();
        }
        sweep_temporaries(dir.path(), 0);
        assert!(tmp.exists(), "depth 0 does not go into sub-folders");
        sweep_temporaries(dir.path(), 1);
        assert!(!tmp.exists());
        assert!(part.exists() && other.exists());
    }
}

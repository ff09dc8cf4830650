//! Confinement of every path a message names.
//!
//! Anyone who can publish to the broker chooses `disk_path`, `config_path`
//! and `file_name`, so none of them is trusted. A path is accepted only when
//! it lies lexically inside an allowed root, and it is written only through
//! [`ConfinedPath::prepare_parent`], which refuses any symbolic link between
//! the root and the file. The file itself is always created as a fresh
//! temporary and renamed into place, and a rename replaces a link at the
//! final name instead of following it.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Longest name of one path component, as on ext4.
const MAX_COMPONENT: usize = 255;
/// Longest whole path accepted from a message.
const MAX_PATH: usize = 1024;
/// gator-ota's own state inside the data folder; hidden, so no message path
/// can name it.
pub const STATE_DIR: &str = ".gator-ota";
/// Longest `file_name`.
const MAX_FILE_NAME: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} holds a NUL byte")]
    Nul { field: &'static str },
    #[error("{field} is longer than {max} bytes")]
    TooLong { field: &'static str, max: usize },
    #[error("{field} {path:?} has a `..`, `.` or empty segment")]
    BadSegment { field: &'static str, path: String },
    #[error("{field} {path:?} is outside the allowed folders {roots}")]
    OutsideRoots {
        field: &'static str,
        path: String,
        roots: String,
    },
    #[error(
        "{field} {path:?} names a hidden file or folder (a segment starting with '.'), which gator-ota keeps for its own state"
    )]
    Hidden { field: &'static str, path: String },
    #[error("{field} {name:?} must be a plain file name of letters, digits, '.', '_' or '-'")]
    BadFileName { field: &'static str, name: String },
}

/// Checks a `file_name`: a plain name, never a path.
pub fn check_file_name(name: &str) -> Result<(), PathError> {
    const FIELD: &str = "file_name";
    if name.is_empty() {
        return Err(PathError::Empty { field: FIELD });
    }
    if name.len() > MAX_FILE_NAME {
        return Err(PathError::TooLong {
            field: FIELD,
            max: MAX_FILE_NAME,
        });
    }
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !plain || name.starts_with('.') {
        return Err(PathError::BadFileName {
            field: FIELD,
            name: name.to_string(),
        });
    }
    Ok(())
}

/// The allowed roots, made absolute and resolved once at start-up.
#[derive(Debug, Clone)]
pub struct Confinement {
    roots: Vec<PathBuf>,
}

impl Confinement {
    /// Creates the roots if they are missing and resolves their links, so a
    /// later comparison is against the real folders.
    pub fn new(roots: &[PathBuf]) -> io::Result<Self> {
        let mut resolved = Vec::with_capacity(roots.len());
        for root in roots {
            std::fs::create_dir_all(root)?;
            resolved.push(root.canonicalize()?);
        }
        if resolved.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no allowed roots",
            ));
        }
        Ok(Self { roots: resolved })
    }

    /// The first root: relative paths and defaults are taken from it.
    pub fn home(&self) -> &Path {
        &self.roots[0]
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Resolves `requested` (as a message gives it) inside a root, by lexical
    /// rules only; links are checked when the parent is prepared.
    pub fn resolve(&self, field: &'static str, requested: &str) -> Result<ConfinedPath, PathError> {
        if requested.is_empty() {
            return Err(PathError::Empty { field });
        }
        if requested.contains('\0') {
            return Err(PathError::Nul { field });
        }
        if requested.len() > MAX_PATH {
            return Err(PathError::TooLong {
                field,
                max: MAX_PATH,
            });
        }
        let bad_segment = || PathError::BadSegment {
            field,
            path: requested.to_string(),
        };
        let path = Path::new(requested);
        // `Path::components` hides `a//b`, `a/./b` and a trailing `/`, all of
        // which are refused: they are never meant and often a probe.
        let body = requested.strip_prefix('/').unwrap_or(requested);
        if body
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(bad_segment());
        }
        if body.split('/').any(|s| s.len() > MAX_COMPONENT) {
            return Err(PathError::TooLong {
                field,
                max: MAX_COMPONENT,
            });
        }
        let (root, relative) = if path.is_absolute() {
            let inside = self
                .roots
                .iter()
                .find_map(|r| path.strip_prefix(r).ok().map(|rel| (r, rel)));
            match inside {
                Some((root, rel)) if !rel.as_os_str().is_empty() => {
                    (root.clone(), rel.to_path_buf())
                }
                _ => {
                    return Err(PathError::OutsideRoots {
                        field,
                        path: requested.to_string(),
                        roots: self.describe(),
                    });
                }
            }
        } else {
            (self.home().to_path_buf(), path.to_path_buf())
        };
        if !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(bad_segment());
        }
        // Hidden names inside a root are gator-ota's own: its state folder
        // (journal, MQTT store) and its staging files.
        if relative
            .components()
            .any(|c| c.as_os_str().as_encoded_bytes().starts_with(b"."))
        {
            return Err(PathError::Hidden {
                field,
                path: requested.to_string(),
            });
        }
        Ok(ConfinedPath { root, relative })
    }

    fn describe(&self) -> String {
        let list: Vec<_> = self.roots.iter().map(|r| r.display().to_string()).collect();
        format!("[{}]", list.join(", "))
    }
}

/// A path proven to lie inside a root: `root/relative`, where `relative`
/// holds only plain names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfinedPath {
    root: PathBuf,
    relative: PathBuf,
}

impl ConfinedPath {
    pub fn full(&self) -> PathBuf {
        self.root.join(&self.relative)
    }

    pub fn file_name(&self) -> &std::ffi::OsStr {
        self.relative.file_name().unwrap_or_default()
    }

    /// Creates the folders between the root and the file, one at a time,
    /// refusing any that is a symbolic link or not a folder, so a link
    /// planted inside the root cannot lead a write outside it. Blocking.
    pub fn prepare_parent(&self) -> io::Result<PathBuf> {
        let mut dir = self.root.clone();
        let parents: Vec<_> = self
            .relative
            .parent()
            .map(|p| p.components().collect())
            .unwrap_or_default();
        for component in parents {
            dir.push(component);
            match std::fs::symlink_metadata(&dir) {
                Ok(meta) if meta.file_type().is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "{} is a symbolic link; refusing to follow it",
                            dir.display()
                        ),
                    ));
                }
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("{} is not a folder", dir.display()),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::create_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
        let final_path = self.full();
        if let Ok(meta) = std::fs::symlink_metadata(&final_path)
            && meta.file_type().is_dir()
        {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{} is a folder", final_path.display()),
            ));
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confinement() -> (tempfile::TempDir, Confinement) {
        let dir = tempfile::tempdir().unwrap();
        let c = Confinement::new(&[dir.path().join("root")]).unwrap();
        (dir, c)
    }

    #[test]
    fn relative_and_inside_absolute_paths_resolve() {
        let (_d, c) = confinement();
        let p = c.resolve("disk_path", "firmware_images/a.bin").unwrap();
        assert_eq!(p.full(), c.home().join("firmware_images/a.bin"));
        let abs = c.home().join("x/y.bin");
        assert_eq!(
            c.resolve("disk_path", abs.to_str().unwrap())
                .unwrap()
                .full(),
            abs
        );
    }

    #[test]
    fn escapes_are_refused() {
        let (_d, c) = confinement();
        let home = c.home().display().to_string();
        for bad in [
            "",
            "../etc/passwd",
            "a/../../b",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "a/",
            "nul\0byte",
            ".gator-ota/jobs/x.json",
            "a/.hidden/b",
            &format!("{home}/../outside"),
            &home,
            &format!("{home}extra/x"),
            &"x".repeat(300),
        ] {
            assert!(c.resolve("disk_path", bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn links_inside_the_root_are_not_followed() {
        let (d, c) = confinement();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, c.home().join("link")).unwrap();
        let p = c.resolve("disk_path", "link/evil.bin").unwrap();
        assert!(p.prepare_parent().is_err());
        let ok = c.resolve("disk_path", "new/deeper/ok.bin").unwrap();
        assert_eq!(ok.prepare_parent().unwrap(), c.home().join("new/deeper"));
    }

    #[test]
    fn file_names_are_plain() {
        assert!(check_file_name("gator_v1.2.3-rc1.bin").is_ok());
        for bad in [
            "",
            "a/b",
            "..",
            ".hidden",
            "a b",
            "ä",
            "x\0",
            &"a".repeat(200),
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?} was accepted");
        }
    }
}

//! Confinement of every path a message names.
//!
//! Anyone who can publish to the broker chooses `disk_path`, `config_path`
//! and `file_name`, so none of them is trusted. A path is accepted only when
//! it lies lexically inside an allowed root (which gives a clear error naming
//! the field), and it is written only through a [`DirHandle`] from
//! [`ConfinedPath::open_parent`]: the folders between the root and the file
//! are opened one by one, each relative to the last and never through a
//! symbolic link, so a link swapped in after the check cannot redirect a
//! write. The file itself is always created exclusively under a temporary
//! name and renamed into place within that handle, and a rename replaces a
//! link at the final name instead of following it.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use rustix::io::Errno;

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

    /// The roots as the settings write them, neither created nor resolved:
    /// for checks that must not touch the disk (`check-config`). `run`
    /// checks again against the real folders ([`Confinement::new`]).
    pub fn lexical(roots: &[PathBuf]) -> Option<Self> {
        (!roots.is_empty()).then(|| Self {
            roots: roots.to_vec(),
        })
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
        self.open_parent(true).map(|dir| dir.path().to_path_buf())
    }

    /// Opens the folder that holds the file, from the root down, each folder
    /// relative to the one before and never through a symbolic link. Every
    /// write goes through the handle this returns, so a link swapped in for a
    /// folder after this call cannot redirect it. With `create`, missing
    /// folders are made and a folder at the file's own name is refused (the
    /// file is about to be written). Blocking.
    pub fn open_parent(&self, create: bool) -> io::Result<DirHandle> {
        let parents: Vec<&OsStr> = self
            .relative
            .parent()
            .map(|p| p.iter().collect())
            .unwrap_or_default();
        let root = DirHandle::open_root(&self.root, parents.is_empty())?;
        let dir = root.walk(&parents, create)?;
        if create
            && let Ok(meta) = dir.stat(self.file_name())
            && meta.is_dir()
        {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{} is a folder", self.full().display()),
            ));
        }
        Ok(dir)
    }
}

/// Flags of the folder a file is written in: a folder, and not a link to
/// one; readable, so it can be synced.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
/// Folders on the way there are only passed through: `O_PATH` needs no read
/// permission, only the search permission a path lookup needs too.
const PASS_FLAGS: OFlags = DIR_FLAGS.union(OFlags::PATH);

/// An open folder, reached without following links. Files are created,
/// renamed and removed relative to it (`openat`, `renameat`, `unlinkat`),
/// never by a path string that could be redirected between two calls.
#[derive(Debug)]
pub struct DirHandle {
    fd: File,
    /// Where the folder was when it was opened; for messages only.
    path: PathBuf,
}

impl DirHandle {
    /// Opens an absolute folder, starting at `/` and refusing a link at any
    /// step: for paths gator-ota recorded itself (under canonical roots, so
    /// no link is ever on the way legitimately). Blocking.
    pub fn open_absolute(path: &Path) -> io::Result<Self> {
        let parts: Vec<&OsStr> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name),
                _ => None,
            })
            .collect();
        let top = Self::open_root(Path::new("/"), parts.is_empty())?;
        top.walk(&parts, false)
    }

    /// A root from the settings: its last component must not be a link (it
    /// was resolved at start-up, so a link there now was swapped in).
    /// `last`: the file is written right in it.
    fn open_root(root: &Path, last: bool) -> io::Result<Self> {
        let flags = if last { DIR_FLAGS } else { PASS_FLAGS };
        match rfs::open(root, flags, Mode::empty()) {
            Ok(fd) => Self::checked(fd, root.to_path_buf()),
            Err(e) if e == Errno::LOOP || e == Errno::NOTDIR => Err(not_a_folder(root)),
            Err(e) => Err(with_path(e.into(), root)),
        }
    }

    /// Descends through `names`, one `openat` each.
    fn walk(self, names: &[&OsStr], create: bool) -> io::Result<Self> {
        let mut dir = self;
        for (i, name) in names.iter().enumerate() {
            dir = dir.child(name, create, i + 1 == names.len())?;
        }
        Ok(dir)
    }

    fn child(&self, name: &OsStr, create: bool, last: bool) -> io::Result<Self> {
        let shown = self.path.join(name);
        let flags = if last { DIR_FLAGS } else { PASS_FLAGS };
        let open = || rfs::openat(&self.fd, name, flags, Mode::empty());
        let opened = match open() {
            Err(e) if e == Errno::NOENT && create => {
                match rfs::mkdirat(&self.fd, name, Mode::from_bits_truncate(0o777)) {
                    Ok(()) => {}
                    Err(e) if e == Errno::EXIST => {}
                    Err(e) => return Err(with_path(e.into(), &shown)),
                }
                open()
            }
            other => other,
        };
        match opened {
            Ok(fd) => Self::checked(fd, shown),
            Err(e) if e == Errno::LOOP || e == Errno::NOTDIR => Err(not_a_folder(&shown)),
            Err(e) => Err(with_path(e.into(), &shown)),
        }
    }

    /// `O_DIRECTORY` already refuses anything but a folder; checked again
    /// because `O_PATH|O_NOFOLLOW` is the one combination that can open a
    /// link itself.
    fn checked(fd: rustix::fd::OwnedFd, path: PathBuf) -> io::Result<Self> {
        let fd = File::from(fd);
        if !fd.metadata()?.is_dir() {
            return Err(not_a_folder(&path));
        }
        Ok(Self { fd, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Device and inode: tells whether two handles are the same folder.
    pub fn identity(&self) -> io::Result<(u64, u64)> {
        let meta = self.fd.metadata()?;
        Ok((meta.dev(), meta.ino()))
    }

    /// Creates `name` exclusively: never opens what is already there, so a
    /// file or link planted at the name is never written through.
    pub fn create_new(&self, name: &OsStr) -> io::Result<File> {
        let flags = OFlags::RDWR
            .union(OFlags::CREATE)
            .union(OFlags::EXCL)
            .union(OFlags::NOFOLLOW)
            .union(OFlags::CLOEXEC);
        rfs::openat(&self.fd, name, flags, Mode::from_bits_truncate(0o666))
            .map(File::from)
            .map_err(io::Error::from)
    }

    /// Opens an existing `name` without following a link at it; without
    /// blocking on a FIFO planted there (the caller checks what it got).
    pub fn open_existing(&self, name: &OsStr, write: bool) -> io::Result<File> {
        let access = if write { OFlags::RDWR } else { OFlags::RDONLY };
        let flags = access
            .union(OFlags::NOFOLLOW)
            .union(OFlags::NONBLOCK)
            .union(OFlags::NOCTTY)
            .union(OFlags::CLOEXEC);
        rfs::openat(&self.fd, name, flags, Mode::empty())
            .map(File::from)
            .map_err(io::Error::from)
    }

    /// What is at `name`, without following a link.
    pub fn stat(&self, name: &OsStr) -> io::Result<std::fs::Metadata> {
        // `statat` gives a raw `Stat` whose field types vary by target; an
        // `O_PATH` handle gives std's portable metadata instead.
        let flags = OFlags::PATH.union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);
        let fd = rfs::openat(&self.fd, name, flags, Mode::empty())?;
        File::from(fd).metadata()
    }

    /// Renames within this folder: atomic, and replaces a link at `to`
    /// instead of following it.
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        rfs::renameat(&self.fd, from, &self.fd, to).map_err(io::Error::from)
    }

    /// Removes `name` from this folder; a missing one is not an error.
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        match rfs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) => Ok(()),
            Err(e) if e == Errno::NOENT => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes the folder's entries (new names, renames) durable.
    pub fn sync(&self) -> io::Result<()> {
        self.fd.sync_all()
    }
}

/// A link or a non-folder where a folder is needed, said plainly.
fn not_a_folder(path: &Path) -> io::Error {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is a symbolic link; refusing to follow it",
                path.display()
            ),
        ),
        _ => io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a folder", path.display()),
        ),
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
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
    fn a_handle_keeps_to_its_folder_when_a_link_takes_its_name() {
        let (d, c) = confinement();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let p = c.resolve("disk_path", "a/b/x.bin").unwrap();
        let dir = p.open_parent(true).unwrap();
        std::fs::rename(c.home().join("a"), c.home().join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, c.home().join("a")).unwrap();
        dir.create_new(OsStr::new("x.bin")).unwrap();
        assert!(c.home().join("moved/b/x.bin").is_file());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        let err = p.open_parent(false).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(DirHandle::open_absolute(&c.home().join("a/b")).is_err());
        let moved = DirHandle::open_absolute(&c.home().join("moved/b")).unwrap();
        assert_eq!(moved.identity().unwrap(), dir.identity().unwrap());
    }

    #[test]
    fn staging_is_exclusive_and_never_through_a_link() {
        let (d, c) = confinement();
        let dir = c
            .resolve("disk_path", "x.bin")
            .unwrap()
            .open_parent(true)
            .unwrap();
        std::fs::write(d.path().join("target"), "outside").unwrap();
        std::os::unix::fs::symlink(d.path().join("target"), c.home().join("link")).unwrap();
        let err = dir.create_new(OsStr::new("link")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(dir.open_existing(OsStr::new("link"), true).is_err());
        assert!(
            dir.stat(OsStr::new("link"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        dir.remove(OsStr::new("link")).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("target")).unwrap(),
            "outside"
        );
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

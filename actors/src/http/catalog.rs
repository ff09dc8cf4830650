//! What the server may hand out, looked up in the index of installed images
//! ([`Journal`]) and the pointer map from the settings, never on the
//! filesystem by a request's path.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::journal::{InstalledImage, Journal};
use crate::paths::DirHandle;

/// Why a request gets no image or pointer; for the debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Miss {
    /// Not a pointer URL, and no installed image has that name.
    Unknown,
    /// A pointer URL whose pointer gator-ota has not written yet.
    NoPointer,
    /// The pointer names an image the server cannot serve now (being
    /// replaced, or gone from the disk): it is withheld, not handed out.
    PointerImageMissing,
    /// The index names it, but the file is not what the index says.
    FileMismatch,
}

impl Miss {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::Unknown => "not a published pointer or an installed image",
            Self::NoPointer => "no pointer has been written at this URL's pointer file yet",
            Self::PointerImageMissing => "the pointer names an image that cannot be served now",
            Self::FileMismatch => "the installed image's file does not match the index",
        }
    }
}

/// An installed image, opened: the handle keeps these bytes even when a
/// newer image is renamed over the path while it is being sent.
pub(crate) struct Opened {
    pub file: File,
    pub image: InstalledImage,
}

pub(crate) struct Catalog {
    journal: Arc<Journal>,
    /// URL path → the pointer file's full path, as the index keys it.
    pointers: HashMap<String, PathBuf>,
}

impl Catalog {
    pub(crate) fn new(journal: Arc<Journal>, pointers: HashMap<String, PathBuf>) -> Self {
        Self { journal, pointers }
    }

    pub(crate) fn is_pointer_url(&self, path: &str) -> bool {
        self.pointers.contains_key(path)
    }

    /// The body of the pointer at URL `path`: the bytes gator-ota wrote to
    /// it, provided the image it names can be served under that name now.
    pub(crate) async fn pointer(&self, path: &str) -> Result<String, Miss> {
        let file = self.pointers.get(path).ok_or(Miss::Unknown)?;
        let named = self.journal.pointer_at(file).await.ok_or(Miss::NoPointer)?;
        match self.open(&named.file_name).await {
            Ok((disk_path, _)) if disk_path == named.disk_path => Ok(named.file_name),
            _ => Err(Miss::PointerImageMissing),
        }
    }

    /// Opens the installed image a device asks for by `name`.
    pub(crate) async fn image(&self, name: &str) -> Result<Opened, Miss> {
        self.open(name).await.map(|(_, opened)| opened)
    }

    async fn open(&self, name: &str) -> Result<(PathBuf, Opened), Miss> {
        let (disk_path, image) = self.journal.image_named(name).await.ok_or(Miss::Unknown)?;
        let path = disk_path.clone();
        let len = image.bytes;
        let file = tokio::task::spawn_blocking(move || open_image(&path, len))
            .await
            .map_err(|_| Miss::FileMismatch)?
            .map_err(|_| Miss::FileMismatch)?;
        // The job forgets an image in the index before it renames a new one
        // over it: if the index still vouches for this one now, the file
        // opened above is the one it vouches for.
        if self.journal.installed(&disk_path).await.as_ref() != Some(&image) {
            return Err(Miss::FileMismatch);
        }
        Ok((disk_path, Opened { file, image }))
    }
}

/// Opens a recorded image without following a link anywhere on its path,
/// and only if it is a regular file of the recorded length. Blocking.
fn open_image(path: &std::path::Path, len: u64) -> io::Result<File> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::ErrorKind::NotFound.into());
    };
    let file = DirHandle::open_absolute(dir)?.open_existing(name, false)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() != len {
        return Err(io::ErrorKind::InvalidData.into());
    }
    Ok(file)
}

//! What the server may hand out, looked up in the index of installed images
//! ([`Journal`]) and the pointer map from the settings, never on the
//! filesystem by a request's path.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::verified::{FileId, Served, Verified};
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

/// An installed image, ready to send: an open file, so the bytes stay
/// these even when a newer image is renamed over the path while they are
/// being sent.
pub(crate) struct Opened {
    pub file: File,
    pub image: InstalledImage,
    /// From the server's own read, checked against the index.
    pub served: Served,
}

pub(crate) struct Catalog {
    journal: Arc<Journal>,
    /// URL path → the pointer file's full path, as the index keys it.
    pointers: HashMap<String, PathBuf>,
    verified: Verified,
}

impl Catalog {
    pub(crate) fn new(journal: Arc<Journal>, pointers: HashMap<String, PathBuf>) -> Self {
        Self {
            journal,
            pointers,
            verified: Verified::default(),
        }
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
        let (file, id) = tokio::task::spawn_blocking(move || open_image(&path, len))
            .await
            .map_err(|_| Miss::FileMismatch)?
            .map_err(|_| Miss::FileMismatch)?;
        // The job forgets an image in the index before it renames a new one
        // over it: if the index still vouches for this one now, the file
        // opened above is the one it vouches for.
        if self.journal.installed(&disk_path).await.as_ref() != Some(&image) {
            return Err(Miss::FileMismatch);
        }
        let served = self.verified.digests(&disk_path, &image, &file, id).await;
        let served = served.ok_or(Miss::FileMismatch)?;
        Ok((
            disk_path,
            Opened {
                file,
                image,
                served,
            },
        ))
    }
}

/// Opens a recorded image without following a link anywhere on its path,
/// and only if it is a regular file of the recorded length. Blocking.
fn open_image(path: &std::path::Path, len: u64) -> io::Result<(File, FileId)> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::ErrorKind::NotFound.into());
    };
    let file = DirHandle::open_absolute(dir)?.open_existing(name, false)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() != len {
        return Err(io::ErrorKind::InvalidData.into());
    }
    Ok((file, FileId::of(&meta)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::PointerRecord;

    fn image(name: &str, bytes: u64) -> InstalledImage {
        InstalledImage {
            file_name: name.into(),
            cloud_path: format!("fw/{name}"),
            bytes,
            sha256: Some(crate::hashes::hex(&<sha2::Sha256 as sha2::Digest>::digest(
                b"image",
            ))),
            md5: None,
            crc: None,
            etag: None,
            seq: 1,
        }
    }

    /// A journal with one image (`a_v1.0.0.bin`, on disk as `.bin.bin`) that
    /// the pointer `/cv` names.
    async fn catalog(root: &std::path::Path) -> (Catalog, Arc<Journal>, PathBuf) {
        let (journal, _) = Journal::open(&root.join(".gator-ota")).unwrap();
        let journal = Arc::new(journal);
        let disk = root.join("img/a_v1.0.0.bin.bin");
        std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
        std::fs::write(&disk, b"image").unwrap();
        journal
            .record_installed(disk.clone(), image("a_v1.0.0.bin", 5))
            .await
            .unwrap();
        let pointer = root.join("latest.json");
        let named = PointerRecord {
            file_name: "a_v1.0.0.bin".into(),
            disk_path: disk.clone(),
        };
        journal
            .record_pointer(pointer.clone(), named)
            .await
            .unwrap();
        let urls = HashMap::from([("/cv".to_string(), pointer)]);
        (Catalog::new(journal.clone(), urls), journal, disk)
    }

    #[actix_rt::test]
    async fn images_by_either_name_and_the_pointer_while_its_image_serves() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let (catalog, _, disk) = catalog(&root).await;
        assert_eq!(catalog.pointer("/cv").await.unwrap(), "a_v1.0.0.bin");
        assert!(catalog.image("a_v1.0.0.bin").await.is_ok());
        assert!(catalog.image("a_v1.0.0.bin.bin").await.is_ok());
        assert_eq!(catalog.pointer("/other").await.err(), Some(Miss::Unknown));
        assert_eq!(
            catalog.image("latest.json").await.err(),
            Some(Miss::Unknown)
        );

        // A file of another length than the index says is not served, and
        // neither is the pointer that names it.
        std::fs::write(&disk, b"longer image").unwrap();
        assert_eq!(
            catalog.image("a_v1.0.0.bin").await.err(),
            Some(Miss::FileMismatch)
        );
        assert_eq!(
            catalog.pointer("/cv").await.err(),
            Some(Miss::PointerImageMissing)
        );
        std::fs::remove_file(&disk).unwrap();
        assert_eq!(
            catalog.pointer("/cv").await.err(),
            Some(Miss::PointerImageMissing)
        );
    }

    #[actix_rt::test]
    async fn an_image_the_index_no_longer_vouches_for_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let (catalog, journal, disk) = catalog(&root).await;
        journal
            .forget_installed(std::slice::from_ref(&disk))
            .await
            .unwrap();
        assert_eq!(
            catalog.image("a_v1.0.0.bin").await.err(),
            Some(Miss::Unknown)
        );
        assert_eq!(
            catalog.pointer("/cv").await.err(),
            Some(Miss::PointerImageMissing)
        );
    }

    #[actix_rt::test]
    async fn a_link_in_place_of_an_image_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let (catalog, _, disk) = catalog(&root).await;
        let outside = root.join("outside");
        std::fs::write(&outside, b"12345").unwrap();
        std::fs::remove_file(&disk).unwrap();
        std::os::unix::fs::symlink(&outside, &disk).unwrap();
        assert_eq!(
            catalog.image("a_v1.0.0.bin").await.err(),
            Some(Miss::FileMismatch)
        );
    }
}

//! Detached Ed25519 signatures over whole images.
//!
//! A release pipeline signs the image file itself (pure Ed25519, as
//! `openssl pkeyutl -sign -rawin` or `gator-ota sign` do); the gateway checks
//! the signature against its configured public keys before anything is
//! installed. Verification streams the staged file, so memory stays flat
//! whatever the image size.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::{DecodePublicKey, EncodePublicKey};
use ed25519_dalek::{Signature, VerifyingKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("public key {0:?} is not 32 bytes of base64")]
    BadBase64(String),
    #[error("cannot read public key file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the signature is not 64 bytes (raw or base64)")]
    Malformed,
    #[error("the signature does not verify with any configured public key")]
    NoKeyVerifies,
    #[error("cannot read the image to verify it: {0}")]
    Read(String),
}

/// The trusted public keys.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: Vec<VerifyingKey>,
}

impl Keyring {
    /// Keys as base64 of the raw 32 bytes, and PEM files
    /// (`openssl pkey -pubout`).
    pub fn load(inline: &[String], files: &[PathBuf]) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        for text in inline {
            let raw = B64
                .decode(text.trim())
                .map_err(|_| KeyError::BadBase64(text.clone()))?;
            let raw: [u8; 32] = raw
                .try_into()
                .map_err(|_| KeyError::BadBase64(text.clone()))?;
            keys.push(
                VerifyingKey::from_bytes(&raw).map_err(|_| KeyError::BadBase64(text.clone()))?,
            );
        }
        for path in files {
            let file_err = |reason: String| KeyError::File {
                path: path.clone(),
                reason,
            };
            let pem = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
            keys.push(
                VerifyingKey::from_public_key_pem(&pem).map_err(|e| file_err(e.to_string()))?,
            );
        }
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `signature` over the file at `path`. Blocking.
    pub fn verify_file(&self, path: &Path, signature: &Signature) -> Result<(), SignatureError> {
        let file = std::fs::File::open(path).map_err(|e| SignatureError::Read(e.to_string()))?;
        self.verify_open(&file, signature)
    }

    /// Checks `signature` over an open file, read from its start: for a file
    /// opened through a folder handle, never by a path. Blocking.
    pub fn verify_open(
        &self,
        mut file: &std::fs::File,
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        for key in &self.keys {
            let mut verifier = key
                .verify_stream(signature)
                .map_err(|_| SignatureError::Malformed)?;
            file.seek(std::io::SeekFrom::Start(0))
                .map_err(|e| SignatureError::Read(e.to_string()))?;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(|e| SignatureError::Read(e.to_string()))?;
                if n == 0 {
                    break;
                }
                verifier.update(&buf[..n]);
            }
            if verifier.finalize_and_verify().is_ok() {
                return Ok(());
            }
        }
        Err(SignatureError::NoKeyVerifies)
    }
}

/// A signature as a message field (base64) or a `.sig` object (raw bytes or
/// base64 text).
pub fn parse_signature(bytes: &[u8]) -> Result<Signature, SignatureError> {
    let raw: Vec<u8> = if bytes.len() == 64 {
        bytes.to_vec()
    } else {
        let text = std::str::from_utf8(bytes).map_err(|_| SignatureError::Malformed)?;
        B64.decode(text.trim())
            .map_err(|_| SignatureError::Malformed)?
    };
    let raw: [u8; 64] = raw.try_into().map_err(|_| SignatureError::Malformed)?;
    Ok(Signature::from_bytes(&raw))
}

/// The public half of a signing key, as settings and PEM files want it.
pub fn public_key_forms(key: &VerifyingKey) -> (String, String) {
    let pem = key
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .unwrap_or_default();
    (B64.encode(key.as_bytes()), pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    #[test]
    fn verifies_good_and_refuses_bad_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image.bin");
        let bytes: Vec<u8> = (0..700_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&image, &bytes).unwrap();
        let signer = SigningKey::from_bytes(&[7u8; 32]);
        let other = SigningKey::from_bytes(&[8u8; 32]);
        let (b64, pem) = public_key_forms(&signer.verifying_key());
        let pem_file = dir.path().join("key.pub.pem");
        std::fs::write(&pem_file, pem).unwrap();

        let by_text = Keyring::load(&[b64], &[]).unwrap();
        let by_file = Keyring::load(&[], &[pem_file]).unwrap();
        let good = signer.sign(&bytes);
        for ring in [&by_text, &by_file] {
            assert_eq!(ring.verify_file(&image, &good), Ok(()));
            assert_eq!(
                ring.verify_file(&image, &other.sign(&bytes)),
                Err(SignatureError::NoKeyVerifies)
            );
        }
        std::fs::write(&image, &bytes[1..]).unwrap();
        assert_eq!(
            by_text.verify_file(&image, &good),
            Err(SignatureError::NoKeyVerifies)
        );
    }

    #[test]
    fn signatures_parse_raw_or_base64() {
        let sig = [3u8; 64];
        assert_eq!(parse_signature(&sig).unwrap().to_bytes(), sig);
        assert_eq!(
            parse_signature(B64.encode(sig).as_bytes())
                .unwrap()
                .to_bytes(),
            sig
        );
        assert_eq!(parse_signature(b"short"), Err(SignatureError::Malformed));
        assert!(Keyring::load(&["AAAA".into()], &[]).is_err());
    }
}

//! `keygen` and `sign`: the release pipeline's half of signed images.
//!
//! Keys are PKCS#8 PEM, the format `openssl genpkey -algorithm ed25519`
//! writes, so either tool can make or use them; signatures are raw 64-byte
//! Ed25519 over the whole image, as `openssl pkeyutl -sign -rawin` makes.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, KeypairBytes};
use ed25519_dalek::{Signer, SigningKey};
use gator_ota_actors::signature::public_key_forms;

pub fn keygen(out: &Path) -> ExitCode {
    report(keygen_in(out))
}

pub fn sign(key: &Path, image: &Path, out: Option<&Path>) -> ExitCode {
    report(sign_file(key, image, out))
}

fn report(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn keygen_in(out: &Path) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let private = out.join("gator-ota-signing.pem");
    let public = out.join("gator-ota-signing.pub.pem");
    if private.exists() {
        return Err(format!(
            "{} exists; refusing to overwrite a signing key",
            private.display()
        ));
    }
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    // PKCS#8 v1 (no embedded public key): the form OpenSSL 3.0 reads too.
    let pem = KeypairBytes {
        secret_key: seed,
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    .map_err(|e| e.to_string())?;
    write_new(&private, pem.as_bytes(), 0o600)?;
    let (b64, pub_pem) = public_key_forms(&key.verifying_key());
    write_new(&public, pub_pem.as_bytes(), 0o644)?;
    println!(
        "private key: {} (keep it off the gateways)",
        private.display()
    );
    println!("public key:  {}", public.display());
    println!("public key for firmware.public_keys: {b64}");
    Ok(())
}

fn sign_file(key: &Path, image: &Path, out: Option<&Path>) -> Result<(), String> {
    let pem =
        std::fs::read_to_string(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    let key = SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| format!("{} is not an Ed25519 PKCS#8 key: {e}", key.display()))?;
    // Pure Ed25519 hashes the message twice, so the image is read whole; a
    // release machine has the memory a gateway lacks.
    let bytes =
        std::fs::read(image).map_err(|e| format!("cannot read {}: {e}", image.display()))?;
    let signature = key.sign(&bytes).to_bytes();
    let out: PathBuf = out.map(Path::to_path_buf).unwrap_or_else(|| {
        let mut name = image.as_os_str().to_owned();
        name.push(".sig");
        PathBuf::from(name)
    });
    std::fs::write(&out, signature).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    println!(
        "signature: {} (upload it beside the image as <cloud_path>.sig)",
        out.display()
    );
    println!(
        "signature for the message's `signature` field: {}",
        B64.encode(signature)
    );
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

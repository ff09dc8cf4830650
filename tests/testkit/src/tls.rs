//! A throwaway PKI for TLS tests, made fresh by each test.
//!
//! [`TestPki::new`] writes a CA, a server certificate for `127.0.0.1` and
//! `localhost`, and a client certificate, all signed by that CA, as PEM files
//! into a folder. [`Broker::start_tls`](crate::Broker::start_tls) serves the
//! server certificate; [`publish_tls`](crate::publish_tls) and
//! [`Subscriber::new_tls`](crate::Subscriber::new_tls) trust the CA and
//! present the client certificate. Nothing is read from or written to the
//! system's certificate store, and nothing outlives the folder.
//!
//! Keys are ECDSA P-256, generated with rcgen on aws-lc-rs (the crypto
//! backend object_store's rustls already builds).

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use md5::{Digest, Md5};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The common name of the client certificate; a broker with
/// `use_identity_as_username true` sees it as the client's user name.
pub const CLIENT_CN: &str = "gator-ota-test-client";

/// The names the default server certificate is valid for.
pub const SERVER_NAMES: &[&str] = &["127.0.0.1", "localhost"];

/// A CA and the certificates it signed, as PEM files in one folder.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate: what a client puts in its trust store.
    pub ca: PathBuf,
    /// The broker's certificate and private key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The client's certificate (CN [`CLIENT_CN`]) and private key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    dir: PathBuf,
    client_key_der: Vec<u8>,
}

impl TestPki {
    /// Writes `ca.pem`, `server.pem`/`server.key` (valid for
    /// [`SERVER_NAMES`]) and `client.pem`/`client.key` into `dir`, which is
    /// created when missing.
    #[track_caller]
    pub fn new(dir: &Path) -> TestPki {
        TestPki::with_server_names(dir, SERVER_NAMES)
    }

    /// Like [`new`](TestPki::new), with a server certificate valid only for
    /// `names` (DNS names or IP addresses): a certificate for another host.
    #[track_caller]
    pub fn with_server_names(dir: &Path, names: &[&str]) -> TestPki {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            fs::write(&path, pem).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            path
        };

        let ca_key = KeyPair::generate().expect("generate the CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "gator-ota test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
        let ca = write("ca.pem", ca_cert.pem());
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("generate a key");
            let mut params = CertificateParams::new(names).expect("certificate params");
            params.distinguished_name.push(DnType::CommonName, cn);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyAgreement,
            ];
            params.extended_key_usages = vec![usage];
            params.use_authority_key_identifier_extension = true;
            let cert = params.signed_by(&key, &issuer).expect("sign a certificate");
            (cert, key)
        };
        let server_names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let (server_cert, server_key) = leaf(
            server_names,
            names.first().copied().unwrap_or("server"),
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(vec![], CLIENT_CN, ExtendedKeyUsagePurpose::ClientAuth);

        TestPki {
            ca,
            server_cert: write("server.pem", server_cert.pem()),
            server_key: write("server.key", server_key.serialize_pem()),
            client_cert: write("client.pem", client_cert.pem()),
            client_key: write("client.key", client_key.serialize_pem()),
            client_key_der: client_key.serialize_der(),
            dir: dir.to_path_buf(),
        }
    }

    /// The folder holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the client key encrypted with `password` (OpenSSL's
    /// `Proc-Type: 4,ENCRYPTED` PEM, AES-128-CBC) and returns its path.
    /// OpenSSL, and so paho, needs the password to load it.
    #[track_caller]
    pub fn encrypted_client_key(&self, password: &str) -> PathBuf {
        use aws_lc_rs::cipher::{
            AES_128, EncryptionContext, PaddedBlockEncryptingKey, UnboundCipherKey,
        };
        let mut iv = [0u8; 16];
        aws_lc_rs::rand::fill(&mut iv).expect("random IV");
        // EVP_BytesToKey(AES-128-CBC, MD5, salt = first 8 bytes of the IV,
        // one round): the key is MD5(password || salt).
        let key: [u8; 16] = Md5::new()
            .chain_update(password.as_bytes())
            .chain_update(&iv[..8])
            .finalize()
            .into();
        let key = UnboundCipherKey::new(&AES_128, &key).expect("AES-128 key");
        let mut body = self.client_key_der.clone();
        PaddedBlockEncryptingKey::cbc_pkcs7(key)
            .expect("AES-128-CBC")
            .less_safe_encrypt(&mut body, EncryptionContext::Iv128(iv.into()))
            .expect("encrypt the client key");
        let iv_hex: String = iv.iter().map(|b| format!("{b:02X}")).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&body);
        let mut pem = format!(
            "-----BEGIN PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,{iv_hex}\n\n"
        );
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        let path = self.dir.join("client-encrypted.key");
        fs::write(&path, pem).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}

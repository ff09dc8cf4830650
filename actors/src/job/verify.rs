//! Whether the staged bytes are the image: the most trusted checksum at
//! hand, then the signature.

use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStoreExt};
use tracing::info;

use super::download::{Miss, fetch_failure};
use super::{Failure, Runner};
use crate::firmware::{Expected, FirmwareJob};
use crate::hashes::{Checks, Crc, Digests};
use crate::s3_response::{ObjectFacts, crc_base64, crc_header};
use crate::signature::parse_signature;
use crate::staging::open_staged;
use crate::status::Reason;

impl Runner {
    /// With `require_signature`, the staged image must carry a signature
    /// that verifies; without it, a signature that comes along is still
    /// checked when keys are configured.
    pub(super) async fn check_signature(
        &self,
        job: &FirmwareJob,
        key: &ObjectPath,
    ) -> Result<(), Failure> {
        let p = &self.policy;
        let invalid = |detail: String| Failure::new(Reason::SignatureInvalid, detail);
        let raw: Option<Vec<u8>> = match &job.signature {
            Some(s) => Some(s.as_bytes().to_vec()),
            None if p.require_signature => self.fetch_sig_object(key).await?,
            None => None,
        };
        let Some(raw) = raw else {
            return if p.require_signature {
                Err(invalid(format!(
                    "no signature: the message has no `signature` field and there is no {}.sig object",
                    job.cloud_path
                )))
            } else {
                Ok(())
            };
        };
        if p.keyring.is_empty() {
            return Ok(());
        }
        let signature = parse_signature(&raw).map_err(|e| invalid(e.to_string()))?;
        let keyring = p.keyring.clone();
        let image = job.disk_path.clone();
        tokio::task::spawn_blocking(move || {
            // Through the folder handle, never following a link: the bytes
            // checked are the staged ones.
            let staged = open_staged(&image).map_err(|e| {
                Failure::new(
                    Reason::Io,
                    format!("cannot read the staged image to check its signature: {e}"),
                )
            })?;
            keyring
                .verify_open(&staged, &signature)
                .map_err(|e| invalid(e.to_string()))
        })
        .await
        .map_err(|e| Failure::new(Reason::Internal, e.to_string()))??;
        info!("signature verified");
        Ok(())
    }

    async fn fetch_sig_object(&self, key: &ObjectPath) -> Result<Option<Vec<u8>>, Failure> {
        let sig_key = ObjectPath::from(format!("{key}.sig"));
        let (wait, idle) = (self.policy.header_timeout, self.policy.idle_timeout);
        let got = match tokio::time::timeout(wait, self.store.get(&sig_key)).await {
            Err(_) => return Err(Miss::NoAnswer("GET", wait).failure(sig_key.as_ref())),
            Ok(Ok(got)) => got,
            Ok(Err(object_store::Error::NotFound { .. })) => return Ok(None),
            Ok(Err(e)) => return Err(fetch_failure(sig_key.as_ref(), e)),
        };
        if got.meta.size > 4096 {
            return Err(Failure::new(
                Reason::SignatureInvalid,
                format!("{sig_key} is {} bytes; a signature is 64", got.meta.size),
            ));
        }
        let bytes = match tokio::time::timeout(idle, got.bytes()).await {
            Err(_) => {
                let detail = format!("timeout: no data for {idle:?} reading {sig_key}");
                return Err(Failure::new(Reason::Timeout, detail));
            }
            Ok(read) => read.map_err(|e| fetch_failure(sig_key.as_ref(), e))?,
        };
        Ok(Some(bytes.to_vec()))
    }
}

/// Whether the message or the object has a SHA-256 or MD5 the staged bytes
/// are checked against: then nothing less trusted is consulted.
fn digest_vouches(expect: &Expected, facts: &ObjectFacts) -> bool {
    expect.sha256.is_some() || expect.md5.is_some() || facts.sha256.is_some()
}

/// What a download computes while it stages the bytes: exactly what
/// [`verify`] checks them against, which is also what the index records.
/// SHA-256 and MD5 when the message or the object gives them; otherwise the
/// object's CRC; without one, MD5 when an ETag that is an MD5 is all there
/// is; and SHA-256 when nothing vouches, so the index still has a digest to
/// re-check the image by. S3 gives every new object a CRC-64/NVME, so most
/// downloads compute that alone, the cheapest digest.
pub(super) fn checks_to_compute(
    expect: &Expected,
    meta: &ObjectMeta,
    facts: &ObjectFacts,
) -> Checks {
    if digest_vouches(expect, facts) {
        return Checks {
            sha256: expect.sha256.is_some() || facts.sha256.is_some(),
            md5: expect.md5.is_some(),
            crc: None,
        };
    }
    let crc = facts.crc().map(|(crc, _)| crc);
    let md5 = crc.is_none() && etag_checks(meta, facts).is_some();
    Checks {
        sha256: crc.is_none() && !md5,
        md5,
        crc,
    }
}

/// The ETag as an MD5 to check, when it can be one.
fn etag_checks(meta: &ObjectMeta, facts: &ObjectFacts) -> Option<String> {
    plain_md5_etag(meta.e_tag.as_deref()).filter(|_| facts.etag_may_be_md5())
}

/// Size is checked by the writer; here the content, by the most trusted
/// checksum at hand: the message's sha256/md5 and the object's own SHA-256;
/// without either the object's CRC-64/NVME or CRC-32C; and without those
/// the ETag when it can be an MD5 (see [`ObjectFacts::etag_may_be_md5`]).
pub(super) fn verify(
    expect: &Expected,
    meta: &ObjectMeta,
    facts: &ObjectFacts,
    digests: &Digests,
) -> Result<(), Failure> {
    if let Some(want) = &expect.sha256 {
        let sha256 = computed(digests.sha256.as_deref(), "SHA-256")?;
        if want != sha256 {
            return Err(mismatch("sha256", want, sha256));
        }
    }
    if let Some(want) = &expect.md5 {
        let md5 = computed(digests.md5.as_deref(), "MD5")?;
        if want != md5 {
            return Err(mismatch("md5", want, md5));
        }
    }
    if let Some(want) = &facts.sha256 {
        let sha256 = computed(digests.sha256.as_deref(), "SHA-256")?;
        if want != sha256 {
            let want = format!("{want} (the object's x-amz-checksum-sha256)");
            return Err(mismatch("sha256", &want, sha256));
        }
    }
    if digest_vouches(expect, facts) {
        return Ok(());
    }
    if let Some((crc, want)) = facts.crc() {
        return check_crc(crc, want, digests.crc);
    }
    match etag_checks(meta, facts) {
        Some(etag) => {
            let md5 = computed(digests.md5.as_deref(), "MD5")?;
            if etag != md5 {
                return Err(mismatch("md5", &format!("{etag} (the object's ETag)"), md5));
            }
        }
        None => info!(
            etag_is_md5 = false,
            encryption = facts.encryption.as_deref().unwrap_or("none"),
            unverifiable = ?facts.unverifiable,
            multipart = plain_md5_etag(meta.e_tag.as_deref()).is_none(),
            "no checksum to check the image against: the message has none, and the object's ETag is not an MD5; only the size was checked"
        ),
    }
    Ok(())
}

/// A digest the download computed ([`checks_to_compute`] asks for each
/// one wherever `verify` needs it: without it, a bug, never "verified").
fn computed<'a>(digest: Option<&'a str>, what: &str) -> Result<&'a str, Failure> {
    digest.ok_or_else(|| {
        Failure::new(
            Reason::Internal,
            format!("the check needs the image's {what}, but the download did not compute it"),
        )
    })
}

fn mismatch(what: &str, want: &str, got: &str) -> Failure {
    Failure::new(
        Reason::ChecksumMismatch,
        format!("{what} is {got}, expected {want}"),
    )
}

/// The staged bytes' `crc` against the object's own, both shown as S3 shows
/// them (base64).
fn check_crc(crc: Crc, want: u64, got: Option<(Crc, u64)>) -> Result<(), Failure> {
    let header = crc_header(crc);
    let Some((_, got)) = got.filter(|(computed, _)| *computed == crc) else {
        // The download computes the CRC `verify` asks for (`checks_to_compute`):
        // this is a bug, and never passes as verified.
        return Err(Failure::new(
            Reason::Internal,
            format!("the object has {header}, but the download did not compute its {crc}"),
        ));
    };
    if got != want {
        let want = format!("{} (the object's {header})", crc_base64(crc, want));
        return Err(mismatch(&crc.to_string(), &want, &crc_base64(crc, got)));
    }
    info!(
        checksum = header,
        "the image matches the object's own checksum"
    );
    Ok(())
}

/// An ETag that is an MD5 of the content: 32 hex digits, not a multipart
/// `<md5>-<parts>` and not a weak tag.
fn plain_md5_etag(etag: Option<&str>) -> Option<String> {
    let tag = etag?.trim_matches('"');
    (tag.len() == 32 && tag.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| tag.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_that_are_md5s() {
        assert_eq!(
            plain_md5_etag(Some("\"5EB63BBBE01EEED093CB22BB8F5ACDC3\"")).as_deref(),
            Some("5eb63bbbe01eeed093cb22bb8f5acdc3")
        );
        assert_eq!(
            plain_md5_etag(Some("\"5eb63bbbe01eeed093cb22bb8f5acdc3-4\"")),
            None
        );
        assert_eq!(plain_md5_etag(Some("W/\"abc\"")), None);
        assert_eq!(plain_md5_etag(None), None);
    }

    const CRC64: u64 = 0xAE8B_1486_0A79_9888;

    fn meta(e_tag: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            location: ObjectPath::from("fw/a.bin"),
            last_modified: chrono::DateTime::UNIX_EPOCH,
            size: 9,
            e_tag: e_tag.map(str::to_string),
            version: None,
        }
    }

    fn digests(crc: Option<(Crc, u64)>) -> Digests {
        Digests {
            sha256: Some("5a".repeat(32)),
            md5: Some("5eb63bbbe01eeed093cb22bb8f5acdc3".into()),
            crc,
        }
    }

    fn crc64(value: u64) -> ObjectFacts {
        ObjectFacts {
            crc64nvme: Some(value),
            crc32c: Some(1),
            ..ObjectFacts::default()
        }
    }

    #[test]
    fn a_crc_is_computed_only_when_no_digest_vouches_for_the_bytes() {
        let crc_of = |expect: &Expected, facts: &ObjectFacts| {
            checks_to_compute(expect, &meta(None), facts).crc
        };
        let none = Expected::default();
        assert_eq!(crc_of(&none, &crc64(CRC64)), Some(Crc::Crc64Nvme));
        let only_crc32c = ObjectFacts {
            crc32c: Some(1),
            ..ObjectFacts::default()
        };
        assert_eq!(crc_of(&none, &only_crc32c), Some(Crc::Crc32c));
        assert_eq!(crc_of(&none, &ObjectFacts::default()), None);
        let sha = Expected {
            sha256: Some("5a".repeat(32)),
            ..Expected::default()
        };
        assert_eq!(crc_of(&sha, &crc64(CRC64)), None);
        let md5 = Expected {
            md5: Some("5eb63bbbe01eeed093cb22bb8f5acdc3".into()),
            ..Expected::default()
        };
        assert_eq!(crc_of(&md5, &crc64(CRC64)), None);
        let s3_sha = ObjectFacts {
            sha256: Some("5a".repeat(32)),
            ..crc64(CRC64)
        };
        assert_eq!(crc_of(&none, &s3_sha), None);
    }

    #[test]
    fn sha256_is_computed_only_when_given_or_nothing_else_vouches() {
        let sha_of = |expect: &Expected, etag: Option<&str>, facts: &ObjectFacts| {
            checks_to_compute(expect, &meta(etag), facts).sha256
        };
        let none = Expected::default();
        let etag = Some("\"5eb63bbbe01eeed093cb22bb8f5acdc3\"");
        // The CRC alone (S3's default), or the ETag's MD5 alone.
        assert!(!sha_of(&none, None, &crc64(CRC64)));
        assert!(!sha_of(&none, etag, &ObjectFacts::default()));
        // A SHA-256 in the message or on the object is computed and checked.
        let sha = Expected {
            sha256: Some("5a".repeat(32)),
            ..Expected::default()
        };
        assert!(sha_of(&sha, None, &crc64(CRC64)));
        let s3_sha = ObjectFacts {
            sha256: Some("5a".repeat(32)),
            ..ObjectFacts::default()
        };
        assert!(sha_of(&none, None, &s3_sha));
        // Nothing to check against: a SHA-256 for the index to re-check by.
        assert!(sha_of(&none, None, &ObjectFacts::default()));
        // And verify never passes a SHA-256 check it has no SHA-256 for.
        let without = Digests {
            sha256: None,
            ..digests(None)
        };
        let err = verify(&sha, &meta(None), &ObjectFacts::default(), &without).unwrap_err();
        assert_eq!(err.reason, Reason::Internal);
    }

    #[test]
    fn md5_is_computed_only_where_it_is_the_check() {
        let md5_of = |expect: &Expected, etag: Option<&str>, facts: &ObjectFacts| {
            checks_to_compute(expect, &meta(etag), facts).md5
        };
        let none = Expected::default();
        let etag = Some("\"5eb63bbbe01eeed093cb22bb8f5acdc3\"");
        // The ETag is all there is: MD5.
        assert!(md5_of(&none, etag, &ObjectFacts::default()));
        // A CRC (S3's default for new objects) or a SHA-256 checks instead.
        assert!(!md5_of(&none, etag, &crc64(CRC64)));
        let sha = Expected {
            sha256: Some("5a".repeat(32)),
            ..Expected::default()
        };
        assert!(!md5_of(&sha, etag, &ObjectFacts::default()));
        // A multipart ETag is no MD5; nothing to check it with.
        assert!(!md5_of(
            &none,
            Some("\"5eb63bbbe01eeed093cb22bb8f5acdc3-2\""),
            &ObjectFacts::default()
        ));
        // The message's own MD5 is always checked, whatever else vouches.
        let md5 = Expected {
            md5: Some("5eb63bbbe01eeed093cb22bb8f5acdc3".into()),
            ..Expected::default()
        };
        assert!(md5_of(&md5, None, &crc64(CRC64)));
        // And verify never passes an MD5 check it has no MD5 for.
        let without = Digests {
            md5: None,
            ..digests(None)
        };
        let err = verify(&none, &meta(etag), &ObjectFacts::default(), &without).unwrap_err();
        assert_eq!(err.reason, Reason::Internal);
    }

    #[test]
    fn the_objects_crc_is_checked_and_a_mismatch_names_the_header() {
        let none = Expected::default();
        let right = digests(Some((Crc::Crc64Nvme, CRC64)));
        // The CRC decides: a plain-MD5 ETag that does not match is not consulted.
        let etag = meta(Some("\"00000000000000000000000000000000\""));
        assert!(verify(&none, &etag, &crc64(CRC64), &right).is_ok());
        let wrong = verify(&none, &etag, &crc64(CRC64 ^ 1), &right).unwrap_err();
        assert_eq!(wrong.reason, Reason::ChecksumMismatch);
        assert_eq!(
            wrong.detail,
            "crc64nvme is rosUhgp5mIg=, expected rosUhgp5mIk= (the object's x-amz-checksum-crc64nvme)"
        );
        let crc32c = ObjectFacts {
            crc32c: Some(0xE306_9283),
            ..ObjectFacts::default()
        };
        let got = digests(Some((Crc::Crc32c, 0)));
        let wrong = verify(&none, &meta(None), &crc32c, &got).unwrap_err();
        assert_eq!(
            wrong.detail,
            "crc32c is AAAAAA==, expected 4waSgw== (the object's x-amz-checksum-crc32c)"
        );
    }

    #[test]
    fn a_crc_not_computed_never_passes() {
        let f = verify(
            &Expected::default(),
            &meta(None),
            &crc64(CRC64),
            &digests(Some((Crc::Crc32c, 1))),
        )
        .unwrap_err();
        assert_eq!(f.reason, Reason::Internal, "{}", f.detail);
    }

    #[test]
    fn a_sha256_outranks_the_crc() {
        let sha = Expected {
            sha256: Some("5a".repeat(32)),
            ..Expected::default()
        };
        // No CRC computed, and the object's (wrong) one is not consulted.
        assert!(verify(&sha, &meta(None), &crc64(1), &digests(None)).is_ok());
        let s3_sha = ObjectFacts {
            sha256: Some("5a".repeat(32)),
            ..crc64(1)
        };
        let none = Expected::default();
        assert!(verify(&none, &meta(None), &s3_sha, &digests(None)).is_ok());
        let bad_sha = ObjectFacts {
            sha256: Some("00".repeat(32)),
            ..crc64(CRC64)
        };
        let right_crc = digests(Some((Crc::Crc64Nvme, CRC64)));
        let f = verify(&none, &meta(None), &bad_sha, &right_crc).unwrap_err();
        assert!(f.detail.contains("x-amz-checksum-sha256"), "{}", f.detail);
    }
}

//! What an S3 response says beyond object_store's [`ObjectMeta`]: whether the
//! ETag can be an MD5, the object's own checksums, and the two answers to a
//! ranged GET that object_store would report only as text.
//!
//! object_store 0.14 keeps neither the response headers nor the status of a
//! failed request in a form a caller can match on. The S3 client is therefore
//! built with [`S3Connector`], a thin layer over object_store's own reqwest
//! connector that
//!
//! - copies the headers below into the response's extensions, which
//!   object_store hands on as [`GetResult::extensions`] (HEAD and GET), and
//! - turns a `200` to a ranged GET and a `416` into typed [`RangeAnswer`]
//!   errors that [`range_answer`] finds in an [`object_store::Error`].
//!
//! [`ObjectMeta`]: object_store::ObjectMeta

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};
use object_store::{ClientOptions, GetResult, HeaderMap};

use crate::hashes::Crc;

/// Asked on every request: without it S3 sends no `x-amz-checksum-*`.
/// Set as a default header, so it is signed with the request.
pub const CHECKSUM_MODE: (&str, &str) = ("x-amz-checksum-mode", "ENABLED");

const SSE: &str = "x-amz-server-side-encryption";
const SSE_C: &str = "x-amz-server-side-encryption-customer-algorithm";
const CHECKSUM_TYPE: &str = "x-amz-checksum-type";
const SHA256: &str = "x-amz-checksum-sha256";
const CRC64NVME: &str = "x-amz-checksum-crc64nvme";
const CRC32C: &str = "x-amz-checksum-crc32c";
/// Checksums S3 may hold that this service does not compute: older SDKs'
/// defaults, rarer than the ones above.
const OTHER_CHECKSUMS: [&str; 2] = ["x-amz-checksum-crc32", "x-amz-checksum-sha1"];

/// What the response headers say about the object's bytes. Empty for stores
/// that are not S3 (a `file://` bucket), where the ETag's form decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectFacts {
    /// `x-amz-server-side-encryption`: `AES256`, `aws:kms`, `aws:kms:dsse`.
    pub encryption: Option<String>,
    /// Encrypted with a key of the customer's (SSE-C).
    pub customer_key: bool,
    /// The object's full-object SHA-256 (`x-amz-checksum-sha256`), as hex.
    pub sha256: Option<String>,
    /// The object's full-object CRC-64/NVME (`x-amz-checksum-crc64nvme`),
    /// S3's default for new uploads.
    pub crc64nvme: Option<u64>,
    /// The object's full-object CRC-32C (`x-amz-checksum-crc32c`).
    pub crc32c: Option<u32>,
    /// Other full-object checksums the object has, by header name.
    pub unverifiable: Vec<&'static str>,
}

impl ObjectFacts {
    /// The facts of a HEAD or GET answered through [`S3Connector`].
    pub fn of(result: &GetResult) -> Self {
        result
            .extensions
            .get::<ObjectFacts>()
            .cloned()
            .unwrap_or_default()
    }

    fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        // A multipart object's checksum is a checksum of checksums
        // (`<base64>-<parts>`, type COMPOSITE): not one of the bytes.
        let composite = text(CHECKSUM_TYPE).is_some_and(|t| t.eq_ignore_ascii_case("COMPOSITE"));
        let whole = |name: &str| text(name).filter(|v| !composite && !v.contains('-'));
        Self {
            encryption: text(SSE).map(str::to_string),
            customer_key: headers.contains_key(SSE_C),
            sha256: whole(SHA256).and_then(sha256_hex),
            crc64nvme: whole(CRC64NVME)
                .and_then(decode::<8>)
                .map(u64::from_be_bytes),
            crc32c: whole(CRC32C).and_then(decode::<4>).map(u32::from_be_bytes),
            unverifiable: OTHER_CHECKSUMS
                .into_iter()
                .filter(|name| whole(name).is_some())
                .collect(),
        }
    }

    /// The object's own CRC to check the bytes against, and its value: the
    /// CRC-64/NVME when it has one, else the CRC-32C. A CRC catches a
    /// corrupted transfer or disk; it is no defence against a forged object
    /// (anyone can make bytes with a given CRC), which is what a SHA-256 in
    /// the message or on the object, or a signature, is for.
    pub fn crc(&self) -> Option<(Crc, u64)> {
        self.crc64nvme
            .map(|v| (Crc::Crc64Nvme, v))
            .or(self.crc32c.map(|v| (Crc::Crc32c, u64::from(v))))
    }

    /// True unless the encryption makes the ETag something other than an
    /// MD5 of the content: only plain and SSE-S3 (`AES256`) objects have MD5
    /// ETags; SSE-KMS, DSSE-KMS and SSE-C ones look like MD5s but are not.
    pub fn etag_may_be_md5(&self) -> bool {
        !self.customer_key && self.encryption.as_deref().is_none_or(|e| e == "AES256")
    }

    /// Adds what a later response says (a GET after its HEAD).
    pub fn merge(&mut self, later: ObjectFacts) {
        if self.encryption.is_none() {
            self.encryption = later.encryption;
        }
        self.customer_key |= later.customer_key;
        if self.sha256.is_none() {
            self.sha256 = later.sha256;
        }
        self.crc64nvme = self.crc64nvme.or(later.crc64nvme);
        self.crc32c = self.crc32c.or(later.crc32c);
        for name in later.unverifiable {
            if !self.unverifiable.contains(&name) {
                self.unverifiable.push(name);
            }
        }
    }
}

/// A base64 SHA-256 as lowercase hex; `None` if it is not one.
fn sha256_hex(b64: &str) -> Option<String> {
    decode::<32>(b64).map(|bytes| bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The `N` bytes of a base64 checksum (big-endian for a CRC); `None` if it
/// is not base64 or not `N` bytes long.
fn decode<const N: usize>(b64: &str) -> Option<[u8; N]> {
    B64.decode(b64.trim()).ok()?.try_into().ok()
}

/// The header S3 sends `crc` in.
pub fn crc_header(crc: Crc) -> &'static str {
    match crc {
        Crc::Crc64Nvme => CRC64NVME,
        Crc::Crc32c => CRC32C,
    }
}

/// `value` as S3 writes it in [`crc_header`]: base64 of its big-endian bytes.
pub fn crc_base64(crc: Crc, value: u64) -> String {
    match crc {
        Crc::Crc64Nvme => B64.encode(value.to_be_bytes()),
        // A CRC-32C is 32 bits wide: the upper half is zero.
        Crc::Crc32c => B64.encode((value as u32).to_be_bytes()),
    }
}

/// How the store answered a GET with a `Range` header, when not with the
/// part asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RangeAnswer {
    #[error("the store ignored the Range header and sent the whole object (200, not 206)")]
    Ignored,
    #[error("the store says the range starts past the end of the object (416)")]
    NotSatisfiable,
}

/// The [`RangeAnswer`] behind a failed GET, if that is why it failed.
pub fn range_answer(e: &object_store::Error) -> Option<RangeAnswer> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(answer) = c.downcast_ref::<RangeAnswer>() {
            return Some(*answer);
        }
        cause = c.source();
    }
    None
}

/// object_store's reqwest connector with the response headers kept and the
/// range answers typed (see the module doc).
#[derive(Debug, Default)]
pub struct S3Connector;

impl HttpConnector for S3Connector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(Observed(
            ReqwestConnector::default().connect(options)?,
        )))
    }
}

#[derive(Debug)]
struct Observed(HttpClient);

#[async_trait::async_trait]
impl HttpService for Observed {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let ranged = req.headers().contains_key("range");
        let mut response = self.0.execute(req).await?;
        let status = response.status().as_u16();
        // Neither is retried by object_store (a 2xx, a 4xx): typing them
        // changes only how the job sees them.
        if ranged && status == 200 {
            return Err(HttpError::new(HttpErrorKind::Unknown, RangeAnswer::Ignored));
        }
        if ranged && status == 416 {
            return Err(HttpError::new(
                HttpErrorKind::Unknown,
                RangeAnswer::NotSatisfiable,
            ));
        }
        if response.status().is_success() {
            let facts = ObjectFacts::from_headers(response.headers());
            response.extensions_mut().insert(facts);
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    // sha256("hello")
    const HELLO_B64: &str = "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=";
    const HELLO_HEX: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn plain_and_sse_s3_etags_may_be_md5s() {
        assert!(ObjectFacts::from_headers(&headers(&[])).etag_may_be_md5());
        assert!(ObjectFacts::from_headers(&headers(&[(SSE, "AES256")])).etag_may_be_md5());
    }

    #[test]
    fn kms_and_customer_key_etags_are_not_md5s() {
        for h in [
            headers(&[(SSE, "aws:kms")]),
            headers(&[(SSE, "aws:kms:dsse")]),
            headers(&[(SSE_C, "AES256")]),
        ] {
            assert!(!ObjectFacts::from_headers(&h).etag_may_be_md5(), "{h:?}");
        }
    }

    #[test]
    fn full_object_checksums_are_read_and_composite_ones_ignored() {
        let f = ObjectFacts::from_headers(&headers(&[
            (SHA256, HELLO_B64),
            (CHECKSUM_TYPE, "FULL_OBJECT"),
            ("x-amz-checksum-crc64nvme", "AAAAAAAAAAA="),
        ]));
        assert_eq!(f.sha256.as_deref(), Some(HELLO_HEX));
        assert_eq!(f.crc64nvme, Some(0));
        assert_eq!(f.unverifiable, Vec::<&str>::new());
        let other = ObjectFacts::from_headers(&headers(&[("x-amz-checksum-crc32", "AAAAAA==")]));
        assert_eq!(other.unverifiable, vec!["x-amz-checksum-crc32"]);

        let composite = ObjectFacts::from_headers(&headers(&[
            (SHA256, HELLO_B64),
            (CHECKSUM_TYPE, "COMPOSITE"),
        ]));
        assert_eq!(composite.sha256, None);
        let parts = ObjectFacts::from_headers(&headers(&[(SHA256, &format!("{HELLO_B64}-3"))]));
        assert_eq!(parts.sha256, None);
        let garbage = ObjectFacts::from_headers(&headers(&[(SHA256, "not base64")]));
        assert_eq!(garbage.sha256, None);
    }

    // CRC-32C and CRC-64/NVME of "123456789" (the catalogue's check
    // values), base64 of their big-endian bytes as S3 sends them.
    const CHECK_CRC32C: u32 = 0xE306_9283;
    const CHECK_CRC32C_B64: &str = "4waSgw==";
    const CHECK_CRC64NVME: u64 = 0xAE8B_1486_0A79_9888;
    const CHECK_CRC64NVME_B64: &str = "rosUhgp5mIg=";

    #[test]
    fn crc_checksums_are_decoded_big_endian() {
        let f = ObjectFacts::from_headers(&headers(&[
            (CRC32C, CHECK_CRC32C_B64),
            (CRC64NVME, CHECK_CRC64NVME_B64),
        ]));
        assert_eq!(f.crc32c, Some(CHECK_CRC32C));
        assert_eq!(f.crc64nvme, Some(CHECK_CRC64NVME));
        assert_eq!(
            crc_base64(Crc::Crc32c, CHECK_CRC32C.into()),
            CHECK_CRC32C_B64
        );
        assert_eq!(
            crc_base64(Crc::Crc64Nvme, CHECK_CRC64NVME),
            CHECK_CRC64NVME_B64
        );
    }

    #[test]
    fn the_crc64nvme_is_preferred_to_the_crc32c() {
        let both = ObjectFacts::from_headers(&headers(&[
            (CRC32C, CHECK_CRC32C_B64),
            (CRC64NVME, CHECK_CRC64NVME_B64),
        ]));
        assert_eq!(both.crc(), Some((Crc::Crc64Nvme, CHECK_CRC64NVME)));
        let crc32c = ObjectFacts::from_headers(&headers(&[(CRC32C, CHECK_CRC32C_B64)]));
        assert_eq!(crc32c.crc(), Some((Crc::Crc32c, u64::from(CHECK_CRC32C))));
        assert_eq!(ObjectFacts::default().crc(), None);
    }

    #[test]
    fn composite_and_malformed_crcs_are_not_taken_for_full_object_ones() {
        let composite = ObjectFacts::from_headers(&headers(&[
            (CRC32C, CHECK_CRC32C_B64),
            (CHECKSUM_TYPE, "COMPOSITE"),
        ]));
        assert_eq!(composite.crc(), None);
        let parts =
            ObjectFacts::from_headers(&headers(&[(CRC32C, &format!("{CHECK_CRC32C_B64}-4"))]));
        assert_eq!(parts.crc(), None);
        // A CRC-32C's 4 bytes where a CRC-64's 8 belong, and the reverse.
        let swapped = ObjectFacts::from_headers(&headers(&[
            (CRC64NVME, CHECK_CRC32C_B64),
            (CRC32C, CHECK_CRC64NVME_B64),
        ]));
        assert_eq!(swapped.crc(), None);
        let garbage = ObjectFacts::from_headers(&headers(&[(CRC64NVME, "not base64!")]));
        assert_eq!(garbage.crc(), None);
    }

    #[test]
    fn a_later_answer_adds_the_crc_its_head_did_not_show() {
        let mut f = ObjectFacts::from_headers(&headers(&[]));
        f.merge(ObjectFacts::from_headers(&headers(&[(
            CRC64NVME,
            CHECK_CRC64NVME_B64,
        )])));
        assert_eq!(f.crc64nvme, Some(CHECK_CRC64NVME));
        // What the first answer said stands.
        f.merge(ObjectFacts::from_headers(&headers(&[(
            CRC64NVME,
            "AAAAAAAAAAA=",
        )])));
        assert_eq!(f.crc64nvme, Some(CHECK_CRC64NVME));
    }

    #[test]
    fn range_answers_are_found_through_the_error_chain() {
        let e = object_store::Error::Generic {
            store: "S3",
            source: Box::new(HttpError::new(
                HttpErrorKind::Unknown,
                RangeAnswer::NotSatisfiable,
            )),
        };
        assert_eq!(range_answer(&e), Some(RangeAnswer::NotSatisfiable));
        let other = object_store::Error::Generic {
            store: "S3",
            source: "connection reset".into(),
        };
        assert_eq!(range_answer(&other), None);
    }
}

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

/// Asked on every request: without it S3 sends no `x-amz-checksum-*`.
/// Set as a default header, so it is signed with the request.
pub const CHECKSUM_MODE: (&str, &str) = ("x-amz-checksum-mode", "ENABLED");

const SSE: &str = "x-amz-server-side-encryption";
const SSE_C: &str = "x-amz-server-side-encryption-customer-algorithm";
const CHECKSUM_TYPE: &str = "x-amz-checksum-type";
const SHA256: &str = "x-amz-checksum-sha256";
/// Checksums S3 may hold that this service cannot compute while streaming.
const OTHER_CHECKSUMS: [&str; 4] = [
    "x-amz-checksum-crc32c",
    "x-amz-checksum-crc64nvme",
    "x-amz-checksum-crc32",
    "x-amz-checksum-sha1",
];

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
            unverifiable: OTHER_CHECKSUMS
                .into_iter()
                .filter(|name| whole(name).is_some())
                .collect(),
        }
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
        for name in later.unverifiable {
            if !self.unverifiable.contains(&name) {
                self.unverifiable.push(name);
            }
        }
    }
}

/// A base64 SHA-256 as lowercase hex; `None` if it is not one.
fn sha256_hex(b64: &str) -> Option<String> {
    let bytes = B64.decode(b64.trim()).ok()?;
    (bytes.len() == 32).then(|| bytes.iter().map(|b| format!("{b:02x}")).collect())
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
        assert_eq!(f.unverifiable, vec!["x-amz-checksum-crc64nvme"]);

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

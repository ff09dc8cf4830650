//! The one `Range` form devices send: `bytes=a-b`, `bytes=a-`, `bytes=-n`.
//!
//! esp_https_ota asks for `bytes=0-0`, then 64 KiB pieces, and resumes with
//! `bytes=N-`; nothing else is needed, so several ranges in one request are
//! answered with the whole image (RFC 9110 lets a server ignore `Range`).

/// What a `Range` header asks of an image of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wanted {
    /// The whole image (no header, a form not handled, several ranges).
    Whole,
    /// Bytes `start..=end`, both inside the image.
    Part { start: u64, end: u64 },
    /// A well-formed range that lies outside the image: `416`.
    Unsatisfiable,
}

pub(crate) fn parse(header: Option<&str>, len: u64) -> Wanted {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Wanted::Whole;
    };
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Wanted::Whole;
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (number(first), last.trim().is_empty()) {
        // `bytes=-n`: the last n bytes.
        (None, false) if first.trim().is_empty() => match number(last) {
            Some(0) => Wanted::Unsatisfiable,
            Some(_) if len == 0 => Wanted::Unsatisfiable,
            Some(n) => Wanted::Part {
                start: len.saturating_sub(n),
                end: len - 1,
            },
            None => Wanted::Whole,
        },
        (Some(start), true) if start < len => Wanted::Part {
            start,
            end: len - 1,
        },
        (Some(_), true) => Wanted::Unsatisfiable,
        (Some(start), false) => match number(last) {
            Some(end) if end < start => Wanted::Whole,
            Some(_) if start >= len => Wanted::Unsatisfiable,
            Some(end) => Wanted::Part {
                start,
                end: end.min(len - 1),
            },
            None => Wanted::Whole,
        },
        _ => Wanted::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_devices_send() {
        let part = |start, end| Wanted::Part { start, end };
        assert_eq!(parse(None, 100), Wanted::Whole);
        assert_eq!(parse(Some("bytes=0-0"), 100), part(0, 0));
        assert_eq!(parse(Some("bytes=0-65535"), 100), part(0, 99));
        assert_eq!(parse(Some("bytes=40-"), 100), part(40, 99));
        assert_eq!(parse(Some("bytes=-10"), 100), part(90, 99));
        assert_eq!(parse(Some("bytes=-500"), 100), part(0, 99));
        assert_eq!(parse(Some("bytes=100-"), 100), Wanted::Unsatisfiable);
        assert_eq!(parse(Some("bytes=100-200"), 100), Wanted::Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 100), Wanted::Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-"), 0), Wanted::Unsatisfiable);
    }

    #[test]
    fn other_forms_get_the_whole_image() {
        for h in [
            "bytes=0-1,5-6",
            "bytes=5-1",
            "bytes=a-b",
            "items=0-1",
            "bytes=",
            "bytes=-",
            "bytes=1",
            "bytes=+1-2",
        ] {
            assert_eq!(parse(Some(h), 100), Wanted::Whole, "{h}");
        }
    }
}

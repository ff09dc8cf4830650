//! SCARECRO's time stamps: `%Y-%m-%dT%H:%M:%S.%f` in UTC (Python's `%f` is
//! six digits of microseconds).

use chrono::{DateTime, Utc};

/// The format string, in chrono's spelling of Python's `%f`.
pub const SCARECRO_TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6f";

pub fn format(t: DateTime<Utc>) -> String {
    t.format(SCARECRO_TIME_FORMAT).to_string()
}

/// Now, as SCARECRO writes it.
pub fn now() -> String {
    format(Utc::now())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    #[test]
    fn matches_python_strftime() {
        let t = chrono::Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).unwrap()
            + chrono::Duration::microseconds(89);
        assert_eq!(super::format(t), "2026-03-04T05:06:07.000089");
    }
}

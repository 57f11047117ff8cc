//! Dates as mail writes them: RFC 5322 3.3 `date-time`, for `Received:`, `Date:` and DSN
//! `Arrival-Date:` fields. Formatting only; this crate never reads the clock.

use std::time::SystemTime;

/// Formats `t` as RFC 5322 `date-time` in UTC, e.g. `Thu, 30 Nov 2026 18:00:00 +0000`.
pub fn rfc5322_date(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".into())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc5322_dates() {
        assert_eq!(super::rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_061_600);
        assert_eq!(super::rfc5322_date(t), "Mon, 30 Nov 2026 18:00:00 +0000");
    }
}

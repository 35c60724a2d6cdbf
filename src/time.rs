//! Time as plasma-batch writes it: RFC 3339 timestamps (UTC, milliseconds) in reports, job
//! records and the journal, and sortable run ids. Formatting is `humantime`'s.

use std::time::{Duration, SystemTime};

/// `2026-11-25T19:30:00.123Z` (UTC, millisecond precision). Times outside what RFC 3339
/// can write (before 1970 or after 9999) are clamped to its ends rather than failing.
pub fn rfc3339(time: SystemTime) -> String {
    // The last millisecond of 9999-12-31, the latest time `humantime` formats.
    let last = SystemTime::UNIX_EPOCH + Duration::from_millis(253_402_300_799_999);
    let time = time.clamp(SystemTime::UNIX_EPOCH, last);
    humantime::format_rfc3339_millis(time).to_string()
}

/// [`rfc3339`] of the current time.
pub fn rfc3339_now() -> String {
    rfc3339(SystemTime::now())
}

/// A sortable run id: `20261125T193000Z-1a2b3c4d`.
pub fn new_run_id(time: SystemTime) -> String {
    let stamp = rfc3339(time);
    let compact: String = stamp[..19]
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("{compact}Z-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_632_441_262);
        assert_eq!(rfc3339(t), "2026-11-25T18:47:21.262Z");
        // A leap day.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000Z");
        let id = new_run_id(t);
        assert!(
            id.starts_with("20000229T000000Z-") && id.len() == 25,
            "{id}"
        );
        // Out of RFC 3339's range: clamped, not a panic.
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00.000Z");
        let after = SystemTime::UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(rfc3339(after), "9999-12-31T23:59:59.999Z");
    }
}

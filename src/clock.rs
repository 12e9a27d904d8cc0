//! Time as the database stores it: unix milliseconds, and the UTC day of a usage row.

use time::OffsetDateTime;

pub const MS_PER_DAY: i64 = 86_400_000;

/// Now, in unix milliseconds.
pub fn now_ms() -> i64 {
    let now = OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// `YYYY-MM-DD` (UTC) of a unix-millisecond instant.
pub fn day_of(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let d = t.date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Unix milliseconds of the UTC midnight that starts `d`.
pub fn midnight_ms(d: time::Date) -> i64 {
    d.midnight().assume_utc().unix_timestamp() * 1000
}

/// RFC 3339 rendering of a unix-millisecond instant, for people and JSON.
pub fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Milliseconds from `now_ms` until the next UTC `hh:mm`.
pub fn ms_until_next(now_ms: i64, (hh, mm): (u8, u8)) -> i64 {
    let target = (i64::from(hh) * 60 + i64::from(mm)) * 60_000;
    let into_day = now_ms.rem_euclid(MS_PER_DAY);
    let wait = (target - into_day).rem_euclid(MS_PER_DAY);
    if wait == 0 { MS_PER_DAY } else { wait }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_instants() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(1_764_028_800_000 - 1), "2025-11-24");
        assert_eq!(day_of(1_764_028_800_000), "2025-11-25");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn next_run_is_the_coming_occurrence() {
        let midnight = 1_764_028_800_000;
        assert_eq!(ms_until_next(midnight, (0, 0)), MS_PER_DAY);
        assert_eq!(ms_until_next(midnight + 1, (0, 0)), MS_PER_DAY - 1);
        assert_eq!(ms_until_next(midnight - 1000, (0, 0)), 1000);
        assert_eq!(ms_until_next(midnight, (1, 30)), 90 * 60_000);
    }
}

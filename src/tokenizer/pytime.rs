//! HF's `strftime_now(format)` template global: the current UTC time (from the `time`
//! crate) formatted with Python's `strftime` codes. `time` has no strftime syntax of its
//! own, so the `%` codes are mapped here, onto its calendar fields.

use time::OffsetDateTime;

/// HF's `strftime_now(format)` global (UTC; supports the common `%` codes).
pub fn strftime_now(format: &str) -> String {
    strftime(OffsetDateTime::now_utc(), format)
}

/// Python `datetime.strftime` for the codes chat templates use; an unknown code is kept
/// as written, as glibc's strftime does.
pub(crate) fn strftime(t: OffsetDateTime, format: &str) -> String {
    let month = t.month().to_string(); // "January"
    let day = t.weekday().to_string(); // "Monday"
    let mut out = String::new();
    let mut it = format.chars().peekable();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('Y') => out.push_str(&t.year().to_string()),
            Some('y') => out.push_str(&format!("{:02}", t.year().rem_euclid(100))),
            Some('m') => out.push_str(&format!("{:02}", u8::from(t.month()))),
            Some('d') => out.push_str(&format!("{:02}", t.day())),
            // glibc's "no padding" flag, which templates use for "%-d"
            Some('-') if it.peek() == Some(&'d') => {
                it.next();
                out.push_str(&t.day().to_string())
            }
            Some('B') => out.push_str(&month),
            Some('b') => out.push_str(&month[..3]),
            Some('A') => out.push_str(&day),
            Some('a') => out.push_str(&day[..3]),
            Some('H') => out.push_str(&format!("{:02}", t.hour())),
            Some('M') => out.push_str(&format!("{:02}", t.minute())),
            Some('S') => out.push_str(&format!("{:02}", t.second())),
            Some('j') => out.push_str(&format!("{:03}", t.ordinal())),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other)
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_utc_dates() {
        let at = |secs| OffsetDateTime::from_unix_timestamp(secs).unwrap();
        // 2024-02-29 13:05:09 UTC, a Thursday
        assert_eq!(strftime(at(1709211909), "%d %b %Y %H:%M:%S %A %j"), "29 Feb 2024 13:05:09 Thursday 060");
        assert_eq!(strftime(at(0), "%Y-%m-%d %B %a %-d %y %q 100%%"), "1970-01-01 January Thu 1 70 %q 100%");
    }
}

//! HF's `strftime_now(format)` template global, in UTC, without a date-time crate.

/// HF's `strftime_now(format)` global (UTC; supports the common `%` codes).
pub fn strftime_now(format: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(secs, format)
}

pub(crate) fn strftime(secs: i64, format: &str) -> String {
    const MONTHS: [&str; 12] = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = secs.div_euclid(86400);
    let tod = secs.rem_euclid(86400);
    // civil-from-days (proleptic Gregorian), days since 1970-01-01
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let wd = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let (mon, day) = (MONTHS[(m - 1) as usize], DAYS[wd]);
    let mut out = String::new();
    let mut it = format.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('-') if it.clone().next() == Some('d') => {
                it.next();
                out.push_str(&d.to_string())
            }
            Some('B') => out.push_str(mon),
            Some('b') => out.push_str(&mon[..3]),
            Some('A') => out.push_str(day),
            Some('a') => out.push_str(&day[..3]),
            Some('H') => out.push_str(&format!("{:02}", tod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", tod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", tod % 60)),
            Some('j') => out.push_str(&format!("{:03}", doy_jan(y, m, d))),
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

fn doy_jan(y: i64, m: i64, d: i64) -> i64 {
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    cum[(m - 1) as usize] + d + i64::from(leap && m > 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_utc_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday
        assert_eq!(strftime(1709211909, "%d %b %Y %H:%M:%S %A %j"), "29 Feb 2024 13:05:09 Thursday 060");
        assert_eq!(strftime(0, "%Y-%m-%d %B %a"), "1970-01-01 January Thu");
    }
}

//! Cron schedules as CronJobs write them: five fields (minute, hour, day of month, month, day of
//! week) with `*`, `?`, lists, ranges, steps and month/weekday names, or one of the descriptors
//! `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`; and the IANA
//! time zones of `spec.timeZone`, read from the system's zoneinfo database.
//!
//! Semantics follow the cron library upstream uses: when both day fields are restricted a day
//! matches if either does, when one of them is `*`/`?` both must (a stepped `*/n` counts as
//! restricted). Schedules are evaluated in local time of the zone: a minute skipped by a DST jump
//! never fires, a repeated one fires once (the first instant is found first).
//!
//! Invariant: searches are bounded (five years), so an impossible schedule (`0 0 30 2 *`) yields
//! `None` instead of looping.

use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{SignedDuration, Timestamp, civil};

/// Why a schedule or time zone is not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CronError {
    #[error("expected exactly 5 fields, found {found}: {text}")]
    FieldCount { found: usize, text: String },
    #[error("unrecognized descriptor: {0}")]
    Descriptor(String),
    #[error("failed to parse {field} {value:?}: {why}")]
    Field {
        field: &'static str,
        value: String,
        why: String,
    },
    #[error("unknown time zone {0}")]
    TimeZone(String),
}

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// True when the day-of-month or day-of-week field is an unrestricted `*`/`?`.
    day_star: bool,
    weekday_star: bool,
}

struct Bounds {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Bounds = Bounds {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Bounds = Bounds {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY: Bounds = Bounds {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Bounds = Bounds {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const WEEKDAY: Bounds = Bounds {
    name: "day of week",
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

/// How far ahead or back a search looks before giving up.
const HORIZON: SignedDuration = SignedDuration::from_hours(5 * 366 * 24);

impl Schedule {
    /// Parses a five-field schedule or a descriptor.
    pub fn parse(text: &str) -> Result<Schedule, CronError> {
        let text = text.trim();
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(CronError::Descriptor(other.to_string()));
            }
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(CronError::FieldCount {
                found: fields.len(),
                text: text.to_string(),
            });
        }
        let (minutes, _) = field(fields[0], &MINUTE)?;
        let (hours, _) = field(fields[1], &HOUR)?;
        let (days, day_star) = field(fields[2], &DAY)?;
        let (months, _) = field(fields[3], &MONTH)?;
        // Day of week 7 is Sunday too.
        let weekday_field = Bounds { max: 7, ..WEEKDAY };
        let (weekdays, weekday_star) = field(fields[4], &weekday_field)?;
        let weekdays = (weekdays | (weekdays >> 7)) & 0x7f;
        Ok(Schedule {
            minutes,
            hours: narrow(hours),
            days: narrow(days),
            months: u16::try_from(months & 0xffff).unwrap_or(0),
            weekdays: u8::try_from(weekdays).unwrap_or(0),
            day_star,
            weekday_star,
        })
    }

    /// True if the schedule fires at the civil minute `t`.
    pub fn matches(&self, t: civil::DateTime) -> bool {
        self.day_matches(t.date()) && self.time_matches(t)
    }

    fn time_matches(&self, t: civil::DateTime) -> bool {
        bit(self.hours.into(), t.hour()) && bit(self.minutes, t.minute())
    }

    fn day_matches(&self, d: civil::Date) -> bool {
        if !bit(self.months.into(), d.month()) {
            return false;
        }
        let day = bit(self.days.into(), d.day());
        let weekday = bit(self.weekdays.into(), d.weekday().to_sunday_zero_offset());
        if self.day_star || self.weekday_star {
            day && weekday
        } else {
            day || weekday
        }
    }

    /// The first firing strictly after `after`, in `tz`.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = truncate_minute(after)
            .checked_add(SignedDuration::from_mins(1))
            .ok()?;
        self.search(start, tz, true)
    }

    /// The last firing at or before `at`, in `tz`.
    pub fn last_at_or_before(&self, at: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        self.search(truncate_minute(at), tz, false)
    }

    /// Walks minute instants from `from` forward or backward, skipping whole hours whose day or
    /// hour cannot match.
    fn search(&self, from: Timestamp, tz: &TimeZone, forward: bool) -> Option<Timestamp> {
        let limit = if forward {
            from.checked_add(HORIZON).ok()?
        } else {
            from.checked_sub(HORIZON).ok()?
        };
        let mut t = from;
        while if forward { t <= limit } else { t >= limit } {
            let local = tz.to_offset(t).to_datetime(t);
            if self.matches(local) {
                return Some(t);
            }
            let minute = i64::from(local.minute());
            let step = if !self.day_matches(local.date()) || !bit(self.hours.into(), local.hour()) {
                // To the first minute of the next local hour (or the last of the previous one).
                if forward { 60 - minute } else { minute + 1 }
            } else {
                1
            };
            let step = SignedDuration::from_mins(step);
            t = if forward {
                t.checked_add(step).ok()?
            } else {
                t.checked_sub(step).ok()?
            };
        }
        None
    }
}

fn truncate_minute(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second().div_euclid(60) * 60).unwrap_or(t)
}

fn narrow(bits: u64) -> u32 {
    u32::try_from(bits & 0xffff_ffff).unwrap_or(0)
}

fn bit(set: u64, n: impl Into<i64>) -> bool {
    let n: i64 = n.into();
    (0..64).contains(&n) && set & (1 << n) != 0
}

/// Parses one field into a bit set; the flag says whether it was an unrestricted `*` or `?`.
fn field(text: &str, b: &Bounds) -> Result<(u64, bool), CronError> {
    let fail = |why: String| CronError::Field {
        field: b.name,
        value: text.to_string(),
        why,
    };
    let mut bits = 0u64;
    let mut star = false;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .map_err(|_| fail(format!("step {step:?} is not a number")))?;
                if step == 0 {
                    return Err(fail("step must be positive".into()));
                }
                (range, Some(step))
            }
            None => (part, None),
        };
        let (low, high) = if range == "*" || range == "?" {
            star = step.is_none_or(|s| s == 1);
            (b.min, b.max)
        } else if let Some((low, high)) = range.split_once('-') {
            (value(low, b).map_err(fail)?, value(high, b).map_err(fail)?)
        } else {
            let low = value(range, b).map_err(fail)?;
            // `n/step` means from n to the end.
            (low, if step.is_some() { b.max } else { low })
        };
        if low > high {
            return Err(fail(format!(
                "beginning of range ({low}) beyond end ({high})"
            )));
        }
        let step = step.unwrap_or(1);
        let mut n = low;
        while n <= high {
            bits |= 1 << n;
            n += step;
        }
    }
    Ok((bits, star))
}

fn value(text: &str, b: &Bounds) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = b.names.iter().position(|n| *n == lower) {
        return Ok(u32::try_from(i).unwrap_or(0) + b.min);
    }
    let n: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if n < b.min || n > b.max {
        return Err(format!("{n} is out of range [{}, {}]", b.min, b.max));
    }
    Ok(n)
}

/// Where IANA zone files are looked for (`ZONEINFO` first, as Go programs do).
fn zoneinfo_dirs() -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("ZONEINFO")
        .map(std::path::PathBuf::from)
        .into_iter()
        .collect();
    dirs.extend(
        [
            "/usr/share/zoneinfo",
            "/usr/lib/zoneinfo",
            "/usr/share/lib/zoneinfo",
            "/etc/zoneinfo",
        ]
        .into_iter()
        .map(std::path::PathBuf::from),
    );
    dirs
}

/// The zone of `spec.timeZone` (UTC when unset). Names are IANA names (`Europe/Berlin`); `Local`
/// and paths are refused, as upstream refuses them.
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, CronError> {
    let Some(name) = name else {
        return Ok(TimeZone::UTC);
    };
    if name == "UTC" || name == "Etc/UTC" {
        return Ok(TimeZone::UTC);
    }
    let plausible = !name.is_empty()
        && name != "Local"
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'));
    if !plausible {
        return Err(CronError::TimeZone(name.to_string()));
    }
    for dir in zoneinfo_dirs() {
        if let Ok(bytes) = std::fs::read(dir.join(name))
            && let Ok(tz) = TimeZone::tzif(name, &bytes)
        {
            return Ok(tz);
        }
    }
    Err(CronError::TimeZone(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn next(spec: &str, after: &str) -> String {
        Schedule::parse(spec)
            .expect("schedule")
            .next_after(ts(after), &TimeZone::UTC)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn fields_lists_ranges_steps_and_names() {
        assert_eq!(
            next("*/15 * * * *", "2026-01-01T10:07:30Z"),
            "2026-01-01T10:15:00Z"
        );
        assert_eq!(
            next("5 4 * * *", "2026-01-01T04:05:00Z"),
            "2026-01-02T04:05:00Z"
        );
        assert_eq!(
            next("0 9-17/4 * * mon-fri", "2026-01-03T00:00:00Z"),
            "2026-01-05T09:00:00Z"
        );
        assert_eq!(
            next("0 0 1,15 feb *", "2026-01-03T00:00:00Z"),
            "2026-02-01T00:00:00Z"
        );
        assert_eq!(
            next("@hourly", "2026-01-01T10:00:00Z"),
            "2026-01-01T11:00:00Z"
        );
        assert_eq!(
            next("0 0 * * 7", "2026-01-01T00:00:00Z"),
            "2026-01-04T00:00:00Z"
        );
        // Both day fields restricted: either matches (the 13th, or any Friday).
        assert_eq!(
            next("0 0 13 * 5", "2026-01-01T00:00:00Z"),
            "2026-01-02T00:00:00Z"
        );
        // One of them `*`: both must.
        assert_eq!(
            next("0 0 13 * *", "2026-01-01T00:00:00Z"),
            "2026-01-13T00:00:00Z"
        );
        assert_eq!(next("0 0 30 2 *", "2026-01-01T00:00:00Z"), "");
    }

    #[test]
    fn bad_schedules_are_refused() {
        for bad in [
            "* * * *",
            "61 * * * *",
            "* * * * mon-",
            "@every 5m",
            "*/0 * * * *",
            "5-1 * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn last_firing_and_time_zones() {
        let s = Schedule::parse("30 2 * * *").expect("schedule");
        let last = s.last_at_or_before(ts("2026-03-10T12:00:00Z"), &TimeZone::UTC);
        assert_eq!(
            last.map(|t| t.to_string()).as_deref(),
            Some("2026-03-10T02:30:00Z")
        );
        if std::path::Path::new("/usr/share/zoneinfo/Europe/Berlin").exists() {
            let berlin = time_zone(Some("Europe/Berlin")).expect("zone");
            let s = Schedule::parse("0 9 * * *").expect("schedule");
            let next = s.next_after(ts("2026-01-10T00:00:00Z"), &berlin);
            assert_eq!(
                next.map(|t| t.to_string()).as_deref(),
                Some("2026-01-10T08:00:00Z")
            );
            let next = s.next_after(ts("2026-07-10T00:00:00Z"), &berlin);
            assert_eq!(
                next.map(|t| t.to_string()).as_deref(),
                Some("2026-07-10T07:00:00Z")
            );
            // 02:30 does not exist in Berlin on 2026-03-29 (clocks jump 02:00 → 03:00).
            let s = Schedule::parse("30 2 * * *").expect("schedule");
            let next = s.next_after(ts("2026-03-28T12:00:00Z"), &berlin);
            assert_eq!(
                next.map(|t| t.to_string()).as_deref(),
                Some("2026-03-30T00:30:00Z")
            );
        }
        assert!(time_zone(Some("Mars/Olympus")).is_err());
        assert!(time_zone(Some("../etc/passwd")).is_err());
        assert!(time_zone(Some("Local")).is_err());
    }
}

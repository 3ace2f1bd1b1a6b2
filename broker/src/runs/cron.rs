//! Cron expressions for drift schedules: the five fields of Vixie cron, read in UTC.
//!
//! Our own, rather than a crate: the candidates either read Quartz's six or seven fields with
//! seconds, bring a date-time and time-zone library for what is integer arithmetic in UTC, or
//! do not follow Vixie's day-of-month/day-of-week rule, and none names the field and the reason
//! of a refusal. This is a parser into bit sets and a day-by-day search, pure and tested here.
//!
//! Syntax: `minute hour day-of-month month day-of-week`; each field a comma-separated list of
//! `*`, `N`, `N-M`, each optionally `/STEP` (`N/STEP` means `N-max/STEP`); months `JAN`–`DEC`
//! and days `SUN`–`SAT` by name (any case); day-of-week 0–7, 0 and 7 both Sunday; the macros
//! `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`) and `@hourly`.
//!
//! Days follow Vixie cron: when the day-of-month or the day-of-week field starts with `*`, a day
//! must match both (so one of them is effectively unrestricted); when both are restricted, a
//! day matching either fires (`0 0 13 * FRI`: every 13th and every Friday).

use std::fmt;

use crate::clock;

/// How far a search looks, in days: 400 years, one full cycle of the Gregorian calendar, so a
/// schedule that can fire (checked at parse) is always found (a 29 February that must also be a
/// Monday recurs only every 28 years, and 2100 is not a leap year).
const SEARCH_DAYS: i64 = 146_097;
/// The longest expression accepted.
const MAX_LEN: usize = 256;

/// One of the five fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// 0–59.
    Minute,
    /// 0–23.
    Hour,
    /// 1–31.
    DayOfMonth,
    /// 1–12 or `JAN`–`DEC`.
    Month,
    /// 0–7 (0 and 7 are Sunday) or `SUN`–`SAT`.
    DayOfWeek,
}

impl Field {
    const ALL: [Self; 5] = [Self::Minute, Self::Hour, Self::DayOfMonth, Self::Month, Self::DayOfWeek];

    fn name(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::DayOfMonth => "day-of-month",
            Self::Month => "month",
            Self::DayOfWeek => "day-of-week",
        }
    }

    /// The values the field accepts, inclusive.
    fn bounds(self) -> (u32, u32) {
        match self {
            Self::Minute => (0, 59),
            Self::Hour => (0, 23),
            Self::DayOfMonth => (1, 31),
            Self::Month => (1, 12),
            Self::DayOfWeek => (0, 7),
        }
    }

    fn names(self) -> &'static [&'static str] {
        match self {
            Self::Month => &["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
            Self::DayOfWeek => &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
            _ => &[],
        }
    }

    /// The value of a name (`JAN` = 1, `SUN` = 0).
    fn named(self, text: &str) -> Option<u32> {
        let first = if self == Self::Month { 1 } else { 0 };
        let index = self.names().iter().position(|name| name.eq_ignore_ascii_case(text))?;
        u32::try_from(index).ok().map(|i| i + first)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an expression was refused: the field and the item, and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// The expression as a whole (field count, length, an unknown macro, never fires).
    #[error("{0}")]
    Expression(String),
    /// One item of one field.
    #[error("{field} field `{item}`: {reason}")]
    Item {
        /// The field.
        field: Field,
        /// The item as written.
        item: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A parsed schedule: the minutes, hours, days, months and weekdays it fires at, as bit sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    text: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Vixie's rule: a day must match both day fields when either starts with `*`, else either.
    days_and: bool,
}

impl Schedule {
    /// Parses `text` (surrounding and repeated white space do not matter).
    pub fn parse(text: &str) -> Result<Self, CronError> {
        if text.len() > MAX_LEN {
            return Err(CronError::Expression(format!("longer than {MAX_LEN} characters")));
        }
        let text = text.trim();
        let expanded = match text.strip_prefix('@') {
            Some(name) => macro_fields(name)?,
            None => text,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(CronError::Expression(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), got {}",
                fields.len()
            )));
        };
        let parsed = [minute, hour, day, month, weekday]
            .iter()
            .zip(Field::ALL)
            .map(|(text, field)| parse_field(field, text))
            .collect::<Result<Vec<u64>, CronError>>()?;
        let &[minutes, hours, days, months, mut weekdays] = &parsed[..] else {
            return Err(CronError::Expression("expected 5 fields".to_owned()));
        };
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        let days_and = day.starts_with('*') || weekday.starts_with('*');
        let normal = if text.starts_with('@') { text.to_ascii_lowercase() } else { fields.join(" ") };
        let schedule = Self { text: normal, minutes, hours, days, months, weekdays, days_and };
        if days_and && !schedule.some_month_has_a_day() {
            return Err(CronError::Expression(
                "never fires: no month of the month field has a day of the day-of-month field".to_owned(),
            ));
        }
        Ok(schedule)
    }

    /// The expression, its fields separated by single spaces (a macro as written, lower case).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The latest time this schedule fires at or before `unix` (seconds), if any within 400
    /// years.
    pub fn latest_at_or_before(&self, unix: i64) -> Option<i64> {
        let minute = unix.div_euclid(60);
        let (today, now) = (minute.div_euclid(1440), minute.rem_euclid(1440));
        (0..=SEARCH_DAYS).find_map(|back| {
            let day = today - back;
            let limit = if back == 0 { now } else { 1439 };
            self.day_matches(day).then(|| self.latest_in_day(limit)).flatten().map(|m| (day * 1440 + m) * 60)
        })
    }

    /// The first time this schedule fires strictly after `unix` (seconds), if any within 400
    /// years.
    pub fn next_after(&self, unix: i64) -> Option<i64> {
        let minute = unix.div_euclid(60) + 1;
        let (today, now) = (minute.div_euclid(1440), minute.rem_euclid(1440));
        (0..=SEARCH_DAYS).find_map(|ahead| {
            let day = today + ahead;
            let from = if ahead == 0 { now } else { 0 };
            self.day_matches(day).then(|| self.first_in_day(from)).flatten().map(|m| (day * 1440 + m) * 60)
        })
    }

    /// Whether the schedule fires on `day` (days since 1970-01-01, a Thursday).
    fn day_matches(&self, day: i64) -> bool {
        let (_, month, dom) = clock::civil_from_days(day);
        let weekday = (day + 4).rem_euclid(7);
        if !bit(self.months, month) {
            return false;
        }
        let (by_date, by_weekday) = (bit(self.days, dom), bit(self.weekdays, weekday));
        if self.days_and { by_date && by_weekday } else { by_date || by_weekday }
    }

    /// The latest minute of a day, at or before minute-of-day `limit`, that fires.
    fn latest_in_day(&self, limit: i64) -> Option<i64> {
        let (last_hour, last_minute) = (limit / 60, limit % 60);
        (0..=last_hour).rev().filter(|&h| bit(self.hours, h)).find_map(|h| {
            let up_to = if h == last_hour { last_minute } else { 59 };
            (0..=up_to).rev().find(|&m| bit(self.minutes, m)).map(|m| h * 60 + m)
        })
    }

    /// The first minute of a day, at or after minute-of-day `from`, that fires.
    fn first_in_day(&self, from: i64) -> Option<i64> {
        let (first_hour, first_minute) = (from / 60, from % 60);
        (first_hour..24).filter(|&h| bit(self.hours, h)).find_map(|h| {
            let from = if h == first_hour { first_minute } else { 0 };
            (from..60).find(|&m| bit(self.minutes, m)).map(|m| h * 60 + m)
        })
    }

    /// Whether some month of the month field has some day of the day-of-month field (February
    /// counts its 29th): otherwise a schedule whose days must match both fields never fires.
    fn some_month_has_a_day(&self) -> bool {
        (1..=12).any(|month| bit(self.months, month) && (1..=days_in_month(month)).any(|day| bit(self.days, day)))
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn bit(set: u64, value: i64) -> bool {
    u32::try_from(value).ok().and_then(|v| 1_u64.checked_shl(v)).is_some_and(|mask| set & mask != 0)
}

/// The most days a month can have (February: 29).
fn days_in_month(month: i64) -> i64 {
    match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn macro_fields(name: &str) -> Result<&'static str, CronError> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "yearly" | "annually" => "0 0 1 1 *",
        "monthly" => "0 0 1 * *",
        "weekly" => "0 0 * * 0",
        "daily" | "midnight" => "0 0 * * *",
        "hourly" => "0 * * * *",
        _ => {
            return Err(CronError::Expression(format!(
                "unknown macro `@{name}`: use @yearly, @monthly, @weekly, @daily or @hourly"
            )));
        }
    })
}

/// A field's bit set: the union of its comma-separated items.
fn parse_field(field: Field, text: &str) -> Result<u64, CronError> {
    text.split(',').try_fold(0_u64, |set, item| Ok(set | parse_item(field, item)?))
}

/// One item: `*`, `N`, `N-M`, each optionally `/STEP`.
fn parse_item(field: Field, item: &str) -> Result<u64, CronError> {
    let fail = |reason: String| CronError::Item { field, item: item.to_owned(), reason };
    let (min, max) = field.bounds();
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, Some(parse_step(field, step).map_err(fail)?)),
        None => (item, None),
    };
    let (low, high) = if range == "*" {
        // `*` in the day-of-week field is 0-6: Sunday once.
        (min, if field == Field::DayOfWeek { 6 } else { max })
    } else if let Some((low, high)) = range.split_once('-') {
        let (low, high) = (value(field, low).map_err(fail)?, value(field, high).map_err(fail)?);
        if low > high {
            return Err(fail(format!("range {low}-{high} runs backwards")));
        }
        (low, high)
    } else {
        let low = value(field, range).map_err(fail)?;
        (low, if step.is_some() { max } else { low })
    };
    let step = step.unwrap_or(1);
    Ok((low..=high).step_by(step).fold(0_u64, |set, v| set | (1 << v)))
}

fn parse_step(field: Field, text: &str) -> Result<usize, String> {
    let (_, max) = field.bounds();
    let step = number(text).ok_or_else(|| format!("step `{text}` is not a number"))?;
    if step == 0 || step > max {
        return Err(format!("step {step} is outside 1-{max}"));
    }
    usize::try_from(step).map_err(|_| format!("step {step} is too large"))
}

/// A value of `field`: a number in range, or a name where the field has names.
fn value(field: Field, text: &str) -> Result<u32, String> {
    let (min, max) = field.bounds();
    if text.is_empty() {
        return Err("empty value".to_owned());
    }
    if let Some(v) = field.named(text) {
        return Ok(v);
    }
    let Some(v) = number(text) else {
        return Err(match (field.names().first(), field.names().last()) {
            (Some(first), Some(last)) => format!("`{text}` is not a number or a name ({first}-{last})"),
            _ => format!("`{text}` is not a number"),
        });
    };
    if !(min..=max).contains(&v) {
        return Err(format!("out of range {min}-{max}"));
    }
    Ok(v)
}

/// A small decimal number (at most three digits, so it never overflows).
fn number(text: &str) -> Option<u32> {
    (!text.is_empty() && text.len() <= 3 && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `YYYY-MM-DDTHH:MM` UTC as Unix seconds.
    fn at(text: &str) -> i64 {
        let n = |range: std::ops::Range<usize>| text[range].parse::<i64>().unwrap();
        let (y, mo, d, h, mi) = (n(0..4), n(5..7), n(8..10), n(11..13), n(14..16));
        // Howard Hinnant's days-from-civil.
        let y = if mo <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400 + h * 3600 + mi * 60
    }

    fn show(unix: Option<i64>) -> String {
        unix.map(|u| crate::clock::rfc3339(u)[..16].to_owned()).unwrap_or_else(|| "never".to_owned())
    }

    fn next(expr: &str, from: &str) -> String {
        show(Schedule::parse(expr).unwrap().next_after(at(from)))
    }

    fn latest(expr: &str, from: &str) -> String {
        show(Schedule::parse(expr).unwrap().latest_at_or_before(at(from)))
    }

    fn refused(expr: &str) -> String {
        Schedule::parse(expr).err().map(|e| e.to_string()).unwrap_or_else(|| format!("{expr} was accepted"))
    }

    #[test]
    fn the_test_calendar_agrees_with_rfc3339() {
        assert_eq!(crate::clock::rfc3339(at("2024-02-29T13:45")), "2024-02-29T13:45:00Z");
        assert_eq!(crate::clock::rfc3339(at("1970-01-01T00:00")), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn errors_name_the_field_the_item_and_the_reason() {
        assert_eq!(refused("61 * * * *"), "minute field `61`: out of range 0-59");
        assert_eq!(refused("* 24 * * *"), "hour field `24`: out of range 0-23");
        assert_eq!(refused("* * 0 * *"), "day-of-month field `0`: out of range 1-31");
        assert_eq!(refused("* * 32 * *"), "day-of-month field `32`: out of range 1-31");
        assert_eq!(refused("* * * 13 *"), "month field `13`: out of range 1-12");
        assert_eq!(refused("* * * * 8"), "day-of-week field `8`: out of range 0-7");
        assert_eq!(refused("* * * FOO *"), "month field `FOO`: `FOO` is not a number or a name (JAN-DEC)");
        assert_eq!(
            refused("* * * * MONDAY"),
            "day-of-week field `MONDAY`: `MONDAY` is not a number or a name (SUN-SAT)"
        );
        assert_eq!(refused("x * * * *"), "minute field `x`: `x` is not a number");
        assert_eq!(refused("-5 * * * *"), "minute field `-5`: empty value");
        assert_eq!(refused("5-1 * * * *"), "minute field `5-1`: range 5-1 runs backwards");
        assert_eq!(refused("*/0 * * * *"), "minute field `*/0`: step 0 is outside 1-59");
        assert_eq!(refused("*/60 * * * *"), "minute field `*/60`: step 60 is outside 1-59");
        assert_eq!(refused("*/x * * * *"), "minute field `*/x`: step `x` is not a number");
        assert_eq!(refused("1/2/3 * * * *"), "minute field `1/2/3`: step `2/3` is not a number");
        assert_eq!(refused("1,,2 * * * *"), "minute field ``: empty value");
        assert_eq!(refused("99999999999 * * * *"), "minute field `99999999999`: `99999999999` is not a number");
        assert_eq!(refused("* * * *"), "expected 5 fields (minute hour day-of-month month day-of-week), got 4");
        assert_eq!(refused("0 * * * * *"), "expected 5 fields (minute hour day-of-month month day-of-week), got 6");
        assert_eq!(refused(""), "expected 5 fields (minute hour day-of-month month day-of-week), got 0");
        assert_eq!(refused("@reboot"), "unknown macro `@reboot`: use @yearly, @monthly, @weekly, @daily or @hourly");
        assert_eq!(
            refused("0 0 30 2 *"),
            "never fires: no month of the month field has a day of the day-of-month field"
        );
        assert_eq!(refused("0 0 31 4,6,9,11 *"), refused("0 0 30 2 *"));
        assert!(refused(&"1,".repeat(200)).contains("longer than 256"));
    }

    #[test]
    fn steps_lists_and_ranges() {
        assert_eq!(next("*/15 * * * *", "2026-03-01T10:00"), "2026-03-01T10:15");
        assert_eq!(next("*/15 * * * *", "2026-03-01T10:44"), "2026-03-01T10:45");
        assert_eq!(next("*/15 * * * *", "2026-03-01T10:45"), "2026-03-01T11:00");
        assert_eq!(next("1-10/3 * * * *", "2026-03-01T10:07"), "2026-03-01T10:10");
        assert_eq!(next("1-10/3 * * * *", "2026-03-01T10:10"), "2026-03-01T11:01");
        assert_eq!(next("5/20 * * * *", "2026-03-01T10:26"), "2026-03-01T10:45");
        assert_eq!(next("0 9,17 * * *", "2026-03-01T09:00"), "2026-03-01T17:00");
        assert_eq!(next("30 8-10 * * *", "2026-03-01T10:30"), "2026-03-02T08:30");
        assert_eq!(next("0 0 * * MON-FRI", "2026-03-06T12:00"), "2026-03-09T00:00", "Friday to Monday");
        assert_eq!(next("0 0 1 jan,Jul *", "2026-03-01T00:00"), "2026-07-01T00:00");
        assert_eq!(next("0 0 * * 7", "2026-03-02T00:00"), "2026-03-08T00:00", "7 is Sunday");
        assert_eq!(next("0 0 * * 0", "2026-03-02T00:00"), "2026-03-08T00:00");
        assert_eq!(latest("*/15 * * * *", "2026-03-01T10:44"), "2026-03-01T10:30");
        assert_eq!(latest("*/15 * * * *", "2026-03-01T10:45"), "2026-03-01T10:45", "at or before");
    }

    #[test]
    fn month_ends_year_ends_and_leap_years() {
        assert_eq!(next("0 0 31 * *", "2026-01-31T00:00"), "2026-03-31T00:00", "no 31 February");
        assert_eq!(next("0 0 31 * *", "2026-03-31T00:00"), "2026-05-31T00:00", "no 31 April");
        assert_eq!(next("0 12 30 * *", "2026-01-30T12:00"), "2026-03-30T12:00");
        assert_eq!(next("59 23 31 12 *", "2025-12-31T23:59"), "2026-12-31T23:59");
        assert_eq!(next("0 0 1 1 *", "2025-12-31T23:59"), "2026-01-01T00:00");
        assert_eq!(next("0 0 29 2 *", "2025-03-01T00:00"), "2028-02-29T00:00");
        assert_eq!(latest("0 0 29 2 *", "2027-01-01T00:00"), "2024-02-29T00:00");
        assert_eq!(next("0 0 29 2 *", "2096-03-01T00:00"), "2104-02-29T00:00", "2100 is no leap year");
        assert_eq!(next("0 0 28 2 *", "2024-02-28T00:00"), "2025-02-28T00:00");
        assert_eq!(latest("0 0 1 3 *", "2024-02-29T23:59"), "2023-03-01T00:00");
    }

    #[test]
    fn restricted_day_fields_fire_on_either_and_a_star_makes_them_both() {
        // The 13th or a Friday: March 2026 starts on a Sunday; the 6th is a Friday.
        assert_eq!(next("0 0 13 * FRI", "2026-03-01T00:00"), "2026-03-06T00:00");
        assert_eq!(next("0 0 13 * FRI", "2026-03-06T00:00"), "2026-03-13T00:00");
        assert_eq!(next("0 0 13 * FRI", "2026-03-13T00:00"), "2026-03-20T00:00");
        assert_eq!(next("0 0 30 2 MON", "2026-02-01T00:00"), "2026-02-02T00:00", "fires: either rule");
        // A field starting with `*` makes both count: odd days that are Mondays.
        assert_eq!(next("0 0 */2 * MON", "2026-03-01T00:00"), "2026-03-09T00:00");
        assert_eq!(next("0 0 1 * */7", "2026-02-01T00:00"), "2026-03-01T00:00", "1st and a Sunday");
        assert_eq!(next("0 0 * * *", "2026-03-01T00:00"), "2026-03-02T00:00");
    }

    #[test]
    fn macros_and_normal_form() {
        assert_eq!(next("@hourly", "2026-03-01T10:30"), "2026-03-01T11:00");
        assert_eq!(next("@daily", "2026-03-01T10:30"), "2026-03-02T00:00");
        assert_eq!(next("@weekly", "2026-03-01T10:30"), "2026-03-08T00:00");
        assert_eq!(next("@monthly", "2026-03-01T10:30"), "2026-04-01T00:00");
        assert_eq!(next("@Annually", "2026-03-01T10:30"), "2027-01-01T00:00");
        assert_eq!(Schedule::parse("  */5\t*  * * *  ").unwrap().as_str(), "*/5 * * * *");
        assert_eq!(Schedule::parse("@Daily").unwrap().to_string(), "@daily");
    }

    /// Whether `schedule`'s fields allow the minute starting at `unix`, checked directly.
    fn fires_at(schedule: &Schedule, unix: i64) -> bool {
        let minute = unix.div_euclid(60);
        let of_day = minute.rem_euclid(1440);
        schedule.day_matches(minute.div_euclid(1440))
            && bit(schedule.hours, of_day / 60)
            && bit(schedule.minutes, of_day % 60)
    }

    /// Every answer of the search agrees with trying each minute in turn.
    #[test]
    fn the_search_agrees_with_brute_force() {
        let start = at("2027-12-20T00:00");
        let minutes = 60 * 24 * 80;
        for expr in [
            "* * * * *",
            "*/7 */5 * * *",
            "0 0 13 * 5",
            "15 10 */3 * 1-5",
            "0 0 1,15,31 * SAT",
            "59 23 * 1,2,12 *",
            "0 12 29 2 *",
            "@weekly",
        ] {
            let schedule = Schedule::parse(expr).unwrap();
            let fires: Vec<i64> = (0..minutes).map(|m| start + m * 60).filter(|&t| fires_at(&schedule, t)).collect();
            assert!(!fires.is_empty(), "{expr} fires in the window");
            // Probe at odd offsets (not whole minutes), inside the window with room on both sides.
            for t in (start + 60 * 24 * 5 * 60..start + (minutes - 60 * 24 * 5) * 60).step_by(60 * 37 + 11) {
                let expected_next = fires.iter().copied().find(|&f| f > t);
                let expected_latest = fires.iter().copied().rev().find(|&f| f <= t);
                if let Some(expected) = expected_next {
                    assert_eq!(schedule.next_after(t), Some(expected), "{expr}: next after {}", show(Some(t)));
                }
                if let Some(expected) = expected_latest {
                    assert_eq!(schedule.latest_at_or_before(t), Some(expected), "{expr}: latest by {}", show(Some(t)));
                }
            }
            for &f in &fires {
                assert_eq!(schedule.latest_at_or_before(f), Some(f), "{expr}: a fire time is its own latest");
                assert_eq!(schedule.latest_at_or_before(f + 59), Some(f), "{expr}: within its minute");
            }
        }
    }
}

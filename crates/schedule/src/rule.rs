//! A schedule's rule: a five-field cron expression read in a time zone, or a fixed period.
//!
//! Times are Unix milliseconds (UTC instants). [`Rule::next_after`] is the only question the
//! scheduler asks; it must be cheap (the core calls it once per slot when counting missed
//! runs) and strictly increasing when iterated.
//!
//! # Cron syntax
//!
//! Vixie/cronie five fields: `minute hour day-of-month month day-of-week`, each a list of `*`,
//! `n`, `a-b`, `*/n`, `a-b/n` or `a/n` (`a` to the field's end, every `n`). Months take
//! `JAN`-`DEC` and weekdays `SUN`-`SAT` (any case); weekday 7 is Sunday, like 0. The macros
//! `@hourly`, `@daily`, `@midnight`, `@weekly`, `@monthly`, `@yearly` and `@annually` stand for
//! their usual expressions; `@reboot` and seconds fields are refused. As in Vixie cron, when
//! both day fields are restricted (neither starts with `*`) a day matches if either does
//! (`0 0 13 * FRI` is every 13th and every Friday); otherwise both must match.
//!
//! # Daylight saving
//!
//! As cron does it, by the kind of job:
//! - A job at a fixed time of day (neither the minute nor the hour field starts with `*`) runs
//!   once per matching day. A local time the clocks skip (spring forward) runs once at the
//!   first instant after the gap: `30 2 * * *` on a day that jumps from 02:00 to 03:00 runs at
//!   03:00. A local time that happens twice (fall back) runs at its first occurrence only.
//! - A job whose minute or hour field starts with `*` follows elapsed time: local times inside
//!   a gap do not happen, so nothing runs for them, and in a fold every occurrence runs
//!   (`0 * * * *` runs at 01:00 daylight time and again at 01:00 standard time).
//!
//! Several skipped fixed times resolve to the same instant, which is one slot.

use std::fmt;

use jiff::Timestamp;
use jiff::tz::{AmbiguousOffset, TimeZone};

mod civil;

use civil::{Civil, days_from_civil, days_in_month, has, next_bit, weekday};

/// Longest cron expression accepted: it comes from other devices.
const MAX_EXPR: usize = 256;
const MAX_ZONE: usize = 64;
const MAX_PERIOD_SPEC: usize = 32;

const SECOND_MS: i64 = 1000;
const MINUTE_MS: i64 = 60 * SECOND_MS;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;
const WEEK_MS: i64 = 7 * DAY_MS;
const MIN_PERIOD_MS: i64 = MINUTE_MS;
const MAX_PERIOD_MS: i64 = 366 * DAY_MS;

/// How far ahead a cron search looks. Eight years rather than five so that `0 0 29 2 *`
/// still finds its next slot across a skipped leap year such as 2100.
const HORIZON_YEARS: i32 = 8;
/// Offsets never differ by more than this, so transitions further ahead than this cannot move
/// a later instant's local time before an earlier one's.
const OFFSET_SPAN_S: i64 = 2 * 86_400;

/// A schedule's rule: when its slots fall. Times are Unix milliseconds (UTC instants).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// A standard five-field cron expression, evaluated in a time zone.
    Cron(Cron),
    /// Every `period_ms`, counted from `anchor_ms`: the slots are `anchor_ms + k * period_ms`
    /// for `k >= 0`.
    Every { period_ms: i64, anchor_ms: i64 },
}

impl Rule {
    /// Parses `expr` to be read in the time zone `zone` (an IANA name or "UTC").
    pub fn cron(expr: &str, zone: &str) -> Result<Rule, RuleError> {
        let (expr, fields) = parse_cron(expr)?;
        let tz = time_zone(zone)?;
        let zone = tz.iana_name().unwrap_or(zone.trim()).to_owned();
        Ok(Rule::Cron(Cron {
            expr,
            zone,
            tz,
            fields,
        }))
    }

    /// Parses a period such as `15m`, `1h30m`, `2d` or `1w` (units `s`, `m`, `h`, `d`, `w`, each
    /// at most once, largest first), counted from `anchor_ms`.
    pub fn every(spec: &str, anchor_ms: i64) -> Result<Rule, RuleError> {
        let trimmed = spec.trim();
        let bad = || RuleError::BadPeriod {
            spec: shorten(trimmed, MAX_PERIOD_SPEC),
        };
        if trimmed.is_empty() || trimmed.len() > MAX_PERIOD_SPEC {
            return Err(bad());
        }
        const UNITS: [(u8, i64); 5] = [
            (b'w', WEEK_MS),
            (b'd', DAY_MS),
            (b'h', HOUR_MS),
            (b'm', MINUTE_MS),
            (b's', SECOND_MS),
        ];
        let mut rest = trimmed.as_bytes();
        let mut allowed = 0;
        let mut total: i64 = 0;
        while !rest.is_empty() {
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let (number, tail) = rest.split_at(digits);
            let Some((&unit, tail)) = tail.split_first() else {
                return Err(bad());
            };
            let unit = unit.to_ascii_lowercase();
            let Some(index) = UNITS.iter().position(|&(u, _)| u == unit) else {
                return Err(bad());
            };
            if digits == 0 || index < allowed {
                return Err(bad());
            }
            let n: i64 = std::str::from_utf8(number)
                .ok()
                .and_then(|n| n.parse().ok())
                .ok_or(RuleError::PeriodTooLong)?;
            total = n
                .checked_mul(UNITS[index].1)
                .and_then(|ms| total.checked_add(ms))
                .ok_or(RuleError::PeriodTooLong)?;
            allowed = index + 1;
            rest = tail;
        }
        Rule::every_ms(total, anchor_ms)
    }

    /// A period read back from a document: the same bounds as [`Rule::every`].
    pub fn every_ms(period_ms: i64, anchor_ms: i64) -> Result<Rule, RuleError> {
        if period_ms < MIN_PERIOD_MS {
            return Err(RuleError::PeriodTooShort);
        }
        if period_ms > MAX_PERIOD_MS {
            return Err(RuleError::PeriodTooLong);
        }
        if period_ms % SECOND_MS != 0 {
            return Err(RuleError::PeriodFraction);
        }
        Ok(Rule::Every {
            period_ms,
            anchor_ms,
        })
    }

    /// The first slot strictly after `after_ms`, or None if there is none within the next
    /// eight years (cron) or it would overflow.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match self {
            Rule::Cron(cron) => cron.next_after(after_ms),
            Rule::Every {
                period_ms,
                anchor_ms,
            } => {
                let (period, anchor) = (*period_ms, *anchor_ms);
                if period <= 0 {
                    return None;
                }
                if after_ms < anchor {
                    return Some(anchor);
                }
                let k = after_ms.checked_sub(anchor)? / period + 1;
                anchor.checked_add(k.checked_mul(period)?)
            }
        }
    }

    /// One line for people: "cron 0 9 * * 1-5 (Europe/Paris)" or "every 15m".
    pub fn describe(&self) -> String {
        match self {
            Rule::Cron(cron) => format!("cron {} ({})", cron.expr, cron.zone),
            Rule::Every { period_ms, .. } => format!("every {}", format_period(*period_ms)),
        }
    }
}

/// A parsed cron expression and the zone it is read in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    expr: String,
    zone: String,
    tz: TimeZone,
    fields: Fields,
}

impl Cron {
    /// The expression, its fields separated by single spaces (or the macro, lowercase).
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The zone's IANA name.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    fn next_after(&self, after_ms: i64) -> Option<i64> {
        let tz = &self.tz;
        let after = Timestamp::from_millisecond(after_ms).ok()?;
        let after_s = after_ms.div_euclid(SECOND_MS);
        let offset_after = i64::from(tz.to_offset(after).seconds());
        // A fold just ahead gives instants after `after` local times before its own: start
        // the local search early by as much as the offset is about to drop.
        let lowest_ahead = tz
            .following(after)
            .take_while(|t| t.timestamp().as_second() <= after_s + OFFSET_SPAN_S)
            .map(|t| i64::from(t.offset().seconds()))
            .fold(offset_after, i64::min);
        let start = Civil::from_local_seconds(after_s + lowest_ahead);
        let last_year = start.y.saturating_add(HORIZON_YEARS).min(9999);

        let mut best: Option<i64> = None;
        // Past this local time, no candidate can resolve to an instant before `best`.
        let mut stop_local = i64::MAX;
        let mut from = start;
        while let Some(civil) = self.fields.next_civil(from, last_year) {
            let local = civil.local_seconds();
            if local > stop_local {
                break;
            }
            for instant in self.instants(civil, local).into_iter().flatten() {
                if instant > after_ms && best.is_none_or(|b| instant < b) {
                    if best.is_none() {
                        stop_local = self.stop_local(after, offset_after, instant);
                    }
                    best = Some(instant);
                }
            }
            from = Civil {
                mi: civil.mi + 1,
                ..civil
            };
        }
        best
    }

    /// The local time beyond which nothing can precede `found`: an instant before `found`
    /// has a local time below `found` plus the highest offset in force between the two.
    fn stop_local(&self, after: Timestamp, offset_after: i64, found_ms: i64) -> i64 {
        let found_s = found_ms.div_euclid(SECOND_MS);
        let highest = self
            .tz
            .following(after)
            .take_while(|t| t.timestamp().as_second() <= found_s)
            .map(|t| i64::from(t.offset().seconds()))
            .fold(offset_after, i64::max);
        found_s + highest
    }

    /// The instants (ms) at which the matching local time `civil` runs, by the DST rule.
    fn instants(&self, civil: Civil, local: i64) -> [Option<i64>; 2] {
        let Ok(dt) = civil.to_datetime() else {
            return [None, None];
        };
        let at = |offset: jiff::tz::Offset| Some((local - i64::from(offset.seconds())) * 1000);
        match self.tz.to_ambiguous_timestamp(dt).offset() {
            AmbiguousOffset::Unambiguous { offset } => [at(offset), None],
            AmbiguousOffset::Fold { before, after } if self.fields.elapsed_time => {
                [at(before), at(after)]
            }
            AmbiguousOffset::Fold { before, .. } => [at(before), None],
            AmbiguousOffset::Gap { .. } if self.fields.elapsed_time => [None, None],
            AmbiguousOffset::Gap { after, .. } => {
                // Read with the later offset, a time in the gap lands just before the
                // transition, which is the first instant after the gap.
                let before_gap = (local - i64::from(after.seconds())) * 1000;
                let transition = Timestamp::from_millisecond(before_gap)
                    .ok()
                    .and_then(|ts| self.tz.following(ts).next())
                    .map(|t| t.timestamp().as_millisecond());
                [transition, None]
            }
        }
    }
}

/// The parsed fields, as bit sets (bit n set = value n matches).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fields {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Day-of-month or day-of-week starts with `*`: both day fields must match.
    day_and: bool,
    /// The minute or hour field starts with `*`: the job follows elapsed time across DST.
    elapsed_time: bool,
}

impl Fields {
    fn day_matches(&self, day: u8, weekday: u8) -> bool {
        let dom = has(self.days, day);
        let dow = has(self.weekdays, weekday);
        if self.day_and { dom && dow } else { dom || dow }
    }

    /// The first matching local minute at or after `c` (whose fields may have overflowed by
    /// one, like minute 60), in a year no later than `last_year`.
    fn next_civil(&self, mut c: Civil, last_year: i32) -> Option<Civil> {
        loop {
            if c.y > last_year {
                return None;
            }
            let Some(mo) = next_bit(self.months, c.mo) else {
                c = Civil::month_start(c.y + 1, 1);
                continue;
            };
            if mo != c.mo {
                c = Civil::month_start(c.y, mo);
            }
            let Some(d) = self.next_day(c.y, c.mo, c.d) else {
                c = Civil::month_start(c.y, c.mo + 1);
                continue;
            };
            if d != c.d {
                c = Civil {
                    d,
                    h: 0,
                    mi: 0,
                    ..c
                };
            }
            let Some(h) = next_bit(self.hours, c.h) else {
                c = Civil {
                    d: c.d + 1,
                    h: 0,
                    mi: 0,
                    ..c
                };
                continue;
            };
            if h != c.h {
                c = Civil { h, mi: 0, ..c };
            }
            let Some(mi) = next_bit(self.minutes, c.mi) else {
                c = Civil {
                    h: c.h + 1,
                    mi: 0,
                    ..c
                };
                continue;
            };
            return Some(Civil { mi, ..c });
        }
    }

    fn next_day(&self, y: i32, mo: u8, from: u8) -> Option<u8> {
        let last = days_in_month(y, mo);
        if from > last {
            return None;
        }
        let mut weekday = weekday(days_from_civil(y, mo, from));
        for d in from..=last {
            if self.day_matches(d, weekday) {
                return Some(d);
            }
            weekday = (weekday + 1) % 7;
        }
        None
    }

    /// Whether some calendar day can match (`0 0 30 2 *` cannot).
    fn can_match(&self) -> bool {
        if !self.day_and {
            // Either day field may match alone, and every weekday comes round each week.
            return true;
        }
        // Over the years every (month, day) falls on every weekday, so only the lengths of
        // the months matter.
        (1..=12u8)
            .filter(|&m| has(self.months, m))
            .any(|m| (1..=days_in_month(2000, m)).any(|d| has(self.days, d)))
    }
}

/// A cron field, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CronField {
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl CronField {
    fn bounds(self) -> (u8, u8) {
        match self {
            CronField::Minute => (0, 59),
            CronField::Hour => (0, 23),
            CronField::DayOfMonth => (1, 31),
            CronField::Month => (1, 12),
            CronField::DayOfWeek => (0, 7),
        }
    }

    fn range(self) -> String {
        let (lo, hi) = self.bounds();
        format!("{lo}-{hi}")
    }

    fn names_hint(self) -> &'static str {
        match self {
            CronField::Month => ", a name JAN-DEC",
            CronField::DayOfWeek => ", a name SUN-SAT",
            _ => "",
        }
    }

    fn name_value(self, text: &str) -> Option<u8> {
        let names: &[&str] = match self {
            CronField::Month => &MONTH_NAMES,
            CronField::DayOfWeek => &DAY_NAMES,
            _ => return None,
        };
        let index = names.iter().position(|n| n.eq_ignore_ascii_case(text))?;
        let first = if self == CronField::Month { 1 } else { 0 };
        Some(index as u8 + first)
    }
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
        })
    }
}

/// Why a rule or zone was refused; each message is one line a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("the cron expression is empty")]
    Empty,
    #[error("a cron expression is at most {max} characters; this one has {len}")]
    TooLong { len: usize, max: usize },
    #[error(
        "a cron expression has five fields (minute hour day-of-month month day-of-week); \
         {expr:?} has {found}{}", seconds_hint(*.found)
    )]
    FieldCount { expr: String, found: usize },
    #[error("{field} {value} is out of range {} in {expr:?}", .field.range())]
    OutOfRange {
        field: CronField,
        value: String,
        expr: String,
    },
    #[error(
        "{field} {item:?} is not valid in {expr:?}: use *, a number{}, a range a-b, \
         a step */n or a-b/n, or a list of those", .field.names_hint()
    )]
    BadItem {
        field: CronField,
        item: String,
        expr: String,
    },
    #[error("{field} {item:?} has a step of 0 in {expr:?}; a step is at least 1")]
    ZeroStep {
        field: CronField,
        item: String,
        expr: String,
    },
    #[error("{field} range {item:?} is reversed in {expr:?}: put the smaller value first")]
    Reversed {
        field: CronField,
        item: String,
        expr: String,
    },
    #[error("{field} has an empty list item in {expr:?}")]
    EmptyItem { field: CronField, expr: String },
    #[error("@reboot is not supported: a schedule runs at times, not when a device starts")]
    Reboot,
    #[error(
        "unknown macro {name:?}: use @hourly, @daily, @midnight, @weekly, @monthly, @yearly \
         or @annually"
    )]
    UnknownMacro { name: String },
    #[error("{expr:?} never matches: no day fits it")]
    NeverMatches { expr: String },
    #[error("unknown time zone {zone:?}")]
    UnknownZone { zone: String },
    #[error("bad period {spec:?}: use a number and s, m, h, d or w, like 15m or 1h30m")]
    BadPeriod { spec: String },
    #[error("a period must be at least 1 minute")]
    PeriodTooShort,
    #[error("a period must be at most 366 days")]
    PeriodTooLong,
    #[error("a period must be a whole number of seconds")]
    PeriodFraction,
}

fn seconds_hint(found: usize) -> &'static str {
    if found == 6 {
        " (a seconds field is not supported)"
    } else {
        ""
    }
}

/// Keeps error messages one short line whatever another device sent.
fn shorten(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Validates a zone name (IANA, e.g. "Europe/Paris", or "UTC"); returns the jiff TimeZone.
pub fn time_zone(name: &str) -> Result<TimeZone, RuleError> {
    let name = name.trim();
    let unknown = || RuleError::UnknownZone {
        zone: shorten(name, MAX_ZONE),
    };
    if name.is_empty() || name.len() > MAX_ZONE {
        return Err(unknown());
    }
    TimeZone::get(name).map_err(|_| unknown())
}

/// This machine's IANA zone name (jiff's system zone), or "UTC" when it has none.
pub fn local_zone() -> String {
    TimeZone::try_system()
        .ok()
        .and_then(|tz| tz.iana_name().map(str::to_owned))
        .filter(|name| time_zone(name).is_ok())
        .unwrap_or_else(|| "UTC".to_owned())
}

/// A period for people: "15m", "1h30m", "2d".
pub fn format_period(ms: i64) -> String {
    let mut rest = ms.unsigned_abs();
    if rest == 0 {
        return "0s".to_owned();
    }
    let mut out = String::from(if ms < 0 { "-" } else { "" });
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        let n = rest / size;
        rest %= size;
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if rest > 0 {
        out.push_str(&format!("{rest}ms"));
    }
    out
}

fn parse_cron(text: &str) -> Result<(String, Fields), RuleError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(RuleError::Empty);
    }
    let len = text.chars().count();
    if len > MAX_EXPR {
        return Err(RuleError::TooLong { len, max: MAX_EXPR });
    }
    let (expr, parts) = match text.strip_prefix('@') {
        Some(name) => {
            let name = name.to_ascii_lowercase();
            let expansion = match name.as_str() {
                "hourly" => "0 * * * *",
                "daily" | "midnight" => "0 0 * * *",
                "weekly" => "0 0 * * 0",
                "monthly" => "0 0 1 * *",
                "yearly" | "annually" => "0 0 1 1 *",
                "reboot" => return Err(RuleError::Reboot),
                _ => {
                    return Err(RuleError::UnknownMacro {
                        name: shorten(text, 40),
                    });
                }
            };
            (format!("@{name}"), expansion.split(' ').collect::<Vec<_>>())
        }
        None => {
            let parts: Vec<&str> = text.split_whitespace().collect();
            (parts.join(" "), parts)
        }
    };
    let [minute, hour, dom, month, dow] = parts[..] else {
        return Err(RuleError::FieldCount {
            expr,
            found: parts.len(),
        });
    };
    let fields = Fields {
        minutes: parse_field(minute, CronField::Minute, &expr)?,
        hours: parse_field(hour, CronField::Hour, &expr)?,
        days: parse_field(dom, CronField::DayOfMonth, &expr)?,
        months: parse_field(month, CronField::Month, &expr)?,
        weekdays: parse_field(dow, CronField::DayOfWeek, &expr)?,
        day_and: dom.starts_with('*') || dow.starts_with('*'),
        elapsed_time: minute.starts_with('*') || hour.starts_with('*'),
    };
    if !fields.can_match() {
        return Err(RuleError::NeverMatches { expr });
    }
    Ok((expr, fields))
}

fn parse_field(text: &str, field: CronField, expr: &str) -> Result<u64, RuleError> {
    let (lo, hi) = field.bounds();
    let mut set = 0u64;
    for item in text.split(',') {
        let bad = || RuleError::BadItem {
            field,
            item: item.to_owned(),
            expr: expr.to_owned(),
        };
        if item.is_empty() {
            return Err(RuleError::EmptyItem {
                field,
                expr: expr.to_owned(),
            });
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                // A step beyond the field's span selects only the start, as in cron.
                let step: u64 = step.parse().unwrap_or(u64::MAX);
                if step == 0 {
                    return Err(RuleError::ZeroStep {
                        field,
                        item: item.to_owned(),
                        expr: expr.to_owned(),
                    });
                }
                (range, Some(step))
            }
            None => (item, None),
        };
        let value = |text: &str| -> Result<u8, RuleError> {
            if let Some(n) = field.name_value(text) {
                return Ok(n);
            }
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            match text.parse::<u8>() {
                Ok(n) if (lo..=hi).contains(&n) => Ok(n),
                _ => Err(RuleError::OutOfRange {
                    field,
                    value: shorten(text, 12),
                    expr: expr.to_owned(),
                }),
            }
        };
        let (start, end) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(RuleError::Reversed {
                    field,
                    item: item.to_owned(),
                    expr: expr.to_owned(),
                });
            }
            (a, b)
        } else {
            let a = value(range)?;
            (a, if step.is_some() { hi } else { a })
        };
        let step = step.unwrap_or(1);
        let mut n = u64::from(start);
        while n <= u64::from(end) {
            set |= 1 << n;
            n = n.saturating_add(step);
        }
    }
    if field == CronField::DayOfWeek && has(set, 7) {
        set = (set & !(1 << 7)) | 1;
    }
    Ok(set)
}

#[cfg(test)]
mod tests;

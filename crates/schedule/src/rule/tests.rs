#![allow(clippy::unwrap_used)]

use jiff::civil::{DateTime, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

use super::*;

/// An instant from literal RFC 3339 text.
fn at(text: &str) -> i64 {
    text.parse::<Timestamp>().unwrap().as_millisecond()
}

fn cron(expr: &str, zone: &str) -> Rule {
    Rule::cron(expr, zone).unwrap_or_else(|e| panic!("{expr:?} in {zone}: {e}"))
}

/// `n` slots after `from`, checking each is later than the one before.
fn slots(rule: &Rule, from: i64, n: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    let mut t = from;
    for _ in 0..n {
        let next = rule.next_after(t).unwrap();
        assert!(next > t, "{}: {next} after {t}", rule.describe());
        out.push(next);
        t = next;
    }
    out
}

fn err(expr: &str) -> String {
    Rule::cron(expr, "UTC").unwrap_err().to_string()
}

#[test]
fn malformed_expressions_say_what_is_wrong() {
    assert_eq!(err("   "), "the cron expression is empty");
    assert_eq!(
        err("0 9 * *"),
        "a cron expression has five fields (minute hour day-of-month month day-of-week); \
         \"0 9 * *\" has 4"
    );
    assert!(err("0 0 9 * * *").ends_with("has 6 (a seconds field is not supported)"));
    assert_eq!(
        err("61 * * * *"),
        "minute 61 is out of range 0-59 in \"61 * * * *\""
    );
    let cases = [
        ("0 24 * * *", "hour 24 is out of range 0-23"),
        ("0 0 0 * *", "day-of-month 0 is out of range 1-31"),
        ("0 0 * 13 *", "month 13 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week 8 is out of range 0-7"),
        (
            "0 0 * * 1-99999999999",
            "day-of-week 99999999999 is out of range",
        ),
        ("0 0 * * FOO", "day-of-week \"FOO\" is not valid"),
        ("0 0 * JANUARY *", "month \"JANUARY\" is not valid"),
        ("1-2-3 * * * *", "minute \"1-2-3\" is not valid"),
        ("5x * * * *", "minute \"5x\" is not valid"),
        ("-5 * * * *", "minute \"-5\" is not valid"),
        ("*/ * * * *", "minute \"*/\" is not valid"),
        ("1/2/3 * * * *", "minute \"1/2/3\" is not valid"),
        ("0 0 * * 1-5x", "day-of-week \"1-5x\" is not valid"),
        ("*/0 * * * *", "minute \"*/0\" has a step of 0"),
        ("0 1-5/0 * * *", "hour \"1-5/0\" has a step of 0"),
        ("30-10 * * * *", "minute range \"30-10\" is reversed"),
        (
            "0 0 * * FRI-MON",
            "day-of-week range \"FRI-MON\" is reversed",
        ),
        ("1,,2 * * * *", "minute has an empty list item"),
        ("0 0 1, * *", "day-of-month has an empty list item"),
        ("@reboot", "@reboot is not supported"),
        ("@fortnightly", "unknown macro \"@fortnightly\""),
        ("@daily 0", "unknown macro"),
        ("0 0 31 4,6,9,11 *", "never matches"),
    ];
    for (expr, want) in cases {
        let got = err(expr);
        assert!(got.contains(want), "{expr:?}: {got:?} lacks {want:?}");
    }
    assert_eq!(
        err("0 0 30 2 *"),
        "\"0 0 30 2 *\" never matches: no day fits it"
    );
    let long = "0 ".repeat(200);
    assert_eq!(
        err(&long),
        "a cron expression is at most 256 characters; this one has 399"
    );
    // Either day field may match alone, so these do fire.
    cron("0 0 30 2 MON", "UTC");
    cron("0 0 29 2 *", "UTC");
}

#[test]
fn unknown_zones_are_refused() {
    assert_eq!(
        Rule::cron("0 9 * * *", "Mars/Base")
            .unwrap_err()
            .to_string(),
        "unknown time zone \"Mars/Base\""
    );
    assert!(matches!(
        Rule::cron("0 9 * * *", ""),
        Err(RuleError::UnknownZone { .. })
    ));
    assert!(time_zone(&"Europe/".repeat(100)).is_err());
    assert!(time_zone("UTC").is_ok());
    // The zone this machine reports is one the rule accepts.
    cron("0 9 * * *", &local_zone());
}

#[test]
fn every_quarter_hour() {
    let rule = cron("*/15 * * * *", "UTC");
    assert_eq!(
        slots(&rule, at("2026-05-01T10:07:30Z"), 4),
        [
            at("2026-05-01T10:15:00Z"),
            at("2026-05-01T10:30:00Z"),
            at("2026-05-01T10:45:00Z"),
            at("2026-05-01T11:00:00Z"),
        ]
    );
    // A slot is strictly after: from exactly a slot, the next one.
    assert_eq!(
        rule.next_after(at("2026-05-01T10:15:00Z")),
        Some(at("2026-05-01T10:30:00Z"))
    );
    assert_eq!(
        rule.next_after(at("2026-05-01T10:14:59.999Z")),
        Some(at("2026-05-01T10:15:00Z"))
    );
    assert_eq!(
        slots(
            &cron("10-20/5 * * * *", "UTC"),
            at("2026-05-01T10:00:00Z"),
            4
        ),
        [
            at("2026-05-01T10:10:00Z"),
            at("2026-05-01T10:15:00Z"),
            at("2026-05-01T10:20:00Z"),
            at("2026-05-01T11:10:00Z"),
        ]
    );
    // `a/n` runs from a to the field's end.
    assert_eq!(
        slots(&cron("50/4 * * * *", "UTC"), at("2026-05-01T10:00:00Z"), 4),
        [
            at("2026-05-01T10:50:00Z"),
            at("2026-05-01T10:54:00Z"),
            at("2026-05-01T10:58:00Z"),
            at("2026-05-01T11:50:00Z"),
        ]
    );
}

#[test]
fn weekday_mornings_in_paris_skip_weekends() {
    let rule = cron("0 9 * * 1-5", "Europe/Paris");
    // Friday 6 March 2026, after nine.
    assert_eq!(
        slots(&rule, at("2026-03-06T10:00:00+01:00"), 6),
        [
            at("2026-03-09T09:00:00+01:00"),
            at("2026-03-10T09:00:00+01:00"),
            at("2026-03-11T09:00:00+01:00"),
            at("2026-03-12T09:00:00+01:00"),
            at("2026-03-13T09:00:00+01:00"),
            at("2026-03-16T09:00:00+01:00"),
        ]
    );
    // Summer time starts on Sunday 29 March: nine o'clock stays nine o'clock.
    assert_eq!(
        slots(&rule, at("2026-03-27T12:00:00+01:00"), 2),
        [
            at("2026-03-30T09:00:00+02:00"),
            at("2026-03-31T09:00:00+02:00"),
        ]
    );
}

#[test]
fn restricted_day_fields_match_either() {
    let or = cron("0 0 13 * FRI", "UTC");
    let days = [
        "2026-01-02",
        "2026-01-09",
        "2026-01-13",
        "2026-01-16",
        "2026-01-23",
        "2026-01-30",
        "2026-02-06",
        "2026-02-13",
        "2026-02-20",
    ];
    let want: Vec<i64> = days.iter().map(|d| at(&format!("{d}T00:00:00Z"))).collect();
    assert_eq!(slots(&or, at("2026-01-01T00:00:00Z"), days.len()), want);

    // A day field starting with `*` makes both fields count: odd days that are Fridays.
    let and = cron("0 0 */2 * FRI", "UTC");
    assert_eq!(
        slots(&and, at("2026-01-01T00:00:00Z"), 3),
        [
            at("2026-01-09T00:00:00Z"),
            at("2026-01-23T00:00:00Z"),
            at("2026-02-13T00:00:00Z"),
        ]
    );
    let thirteenth = cron("0 0 13 * *", "UTC");
    assert_eq!(
        slots(&thirteenth, at("2026-01-01T00:00:00Z"), 2),
        [at("2026-01-13T00:00:00Z"), at("2026-02-13T00:00:00Z")]
    );
}

#[test]
fn names_and_sunday_as_seven() {
    let from = at("2026-01-01T00:00:00Z");
    let named = cron("0 12 * JAN,jul Mon-fri", "UTC");
    let numbered = cron("0 12 * 1,7 1-5", "UTC");
    assert_eq!(slots(&named, from, 60), slots(&numbered, from, 60));

    let sundays = slots(&cron("0 0 * * 0", "UTC"), from, 20);
    assert_eq!(slots(&cron("0 0 * * 7", "UTC"), from, 20), sundays);
    assert_eq!(slots(&cron("0 0 * * SUN", "UTC"), from, 20), sundays);
    for slot in &sundays {
        let day = Timestamp::from_millisecond(*slot)
            .unwrap()
            .to_zoned(TimeZone::UTC);
        assert_eq!(day.weekday(), Weekday::Sunday);
    }
    let weekend: Vec<Weekday> = slots(&cron("0 0 * * 5-7", "UTC"), from, 6)
        .iter()
        .map(|s| {
            let z = Timestamp::from_millisecond(*s)
                .unwrap()
                .to_zoned(TimeZone::UTC);
            z.weekday()
        })
        .collect();
    use Weekday::{Friday, Saturday, Sunday};
    assert_eq!(
        weekend,
        [Friday, Saturday, Sunday, Friday, Saturday, Sunday]
    );
}

#[test]
fn macros_stand_for_their_expressions() {
    let from = at("2026-02-27T15:16:00Z");
    let zone = "America/New_York";
    for (name, expansion) in [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@ANNUALLY", "0 0 1 1 *"),
    ] {
        let rule = cron(name, zone);
        assert_eq!(
            slots(&rule, from, 5),
            slots(&cron(expansion, zone), from, 5),
            "{name}"
        );
        let lower = name.to_ascii_lowercase();
        assert_eq!(rule.describe(), format!("cron {lower} (America/New_York)"));
    }
    assert_eq!(
        slots(&cron("@monthly", "UTC"), from, 2),
        [at("2026-03-01T00:00:00Z"), at("2026-04-01T00:00:00Z")]
    );
}

#[test]
fn spring_forward_in_new_york() {
    let zone = "America/New_York";
    // 2026-03-08: 02:00 EST becomes 03:00 EDT, so 02:30 does not happen.
    let fixed = cron("30 2 * * *", zone);
    assert_eq!(
        slots(&fixed, at("2026-03-07T12:00:00-05:00"), 3),
        [
            at("2026-03-08T03:00:00-04:00"),
            at("2026-03-09T02:30:00-04:00"),
            at("2026-03-10T02:30:00-04:00"),
        ]
    );
    // Two skipped times are one slot, at the end of the gap.
    let both = cron("0,30 2 * * *", zone);
    assert_eq!(
        slots(&both, at("2026-03-08T00:00:00-05:00"), 3),
        [
            at("2026-03-08T03:00:00-04:00"),
            at("2026-03-09T02:00:00-04:00"),
            at("2026-03-09T02:30:00-04:00"),
        ]
    );
    // Elapsed-time jobs have no 02:30 that day.
    let hourly = cron("30 * * * *", zone);
    assert_eq!(
        slots(&hourly, at("2026-03-08T01:00:00-05:00"), 3),
        [
            at("2026-03-08T01:30:00-05:00"),
            at("2026-03-08T03:30:00-04:00"),
            at("2026-03-08T04:30:00-04:00"),
        ]
    );
}

#[test]
fn fall_back_in_new_york() {
    let zone = "America/New_York";
    // 2026-11-01: 02:00 EDT becomes 01:00 EST, so 01:00-01:59 happens twice.
    let fixed = cron("30 1 * * *", zone);
    assert_eq!(
        slots(&fixed, at("2026-10-31T12:00:00-04:00"), 2),
        [
            at("2026-11-01T01:30:00-04:00"),
            at("2026-11-02T01:30:00-05:00"),
        ]
    );
    // Between the two 01:30s the fixed job is done for the day.
    assert_eq!(
        fixed.next_after(at("2026-11-01T01:45:00-04:00")),
        Some(at("2026-11-02T01:30:00-05:00"))
    );
    let hourly = cron("30 * * * *", zone);
    let got = slots(&hourly, at("2026-11-01T00:00:00-04:00"), 4);
    assert_eq!(
        got,
        [
            at("2026-11-01T00:30:00-04:00"),
            at("2026-11-01T01:30:00-04:00"),
            at("2026-11-01T01:30:00-05:00"),
            at("2026-11-01T02:30:00-05:00"),
        ]
    );
    assert_eq!(got[2] - got[1], HOUR_MS);
    // From inside either pass through the fold.
    assert_eq!(
        hourly.next_after(at("2026-11-01T01:45:00-04:00")),
        Some(at("2026-11-01T01:30:00-05:00"))
    );
    assert_eq!(
        hourly.next_after(at("2026-11-01T01:10:00-05:00")),
        Some(at("2026-11-01T01:30:00-05:00"))
    );
    assert_eq!(
        slots(&cron("@hourly", zone), at("2026-11-01T00:30:00-04:00"), 3),
        [
            at("2026-11-01T01:00:00-04:00"),
            at("2026-11-01T01:00:00-05:00"),
            at("2026-11-01T02:00:00-05:00"),
        ]
    );
}

/// A case for [`year_matches_brute_force`]: an expression, whether it is a fixed-time job,
/// how many slots 2026 has, and which local times it names, written out by hand.
type Case = (&'static str, bool, usize, fn(DateTime) -> bool);

/// Walks every minute of 2026 and derives the slots from the DST rule directly: an
/// elapsed-time job runs at each instant whose local time matches; a fixed-time job runs at
/// the first instant whose local time reaches a matching time not reached before.
fn brute_force(zone: &str, fixed: bool, matches: fn(DateTime) -> bool) -> Vec<i64> {
    let tz = TimeZone::get(zone).unwrap();
    let (start, end) = (at("2026-01-01T00:00:00Z"), at("2027-01-01T00:00:00Z"));
    let local = |ms: i64| tz.to_datetime(Timestamp::from_millisecond(ms).unwrap());
    let mut reached = local(start);
    let mut out = Vec::new();
    let mut t = start;
    while t < end {
        t += MINUTE_MS;
        let now = local(t);
        let runs = if fixed {
            let mut c = reached;
            let mut any = false;
            while c < now {
                c = c.checked_add(1.minute()).unwrap();
                any |= matches(c);
            }
            any
        } else {
            matches(now)
        };
        reached = reached.max(now);
        if runs {
            out.push(t);
        }
    }
    out
}

#[test]
fn year_matches_brute_force() {
    let zones: [(&str, &[Case]); 5] = [
        (
            "America/New_York",
            &[
                ("*/15 * * * *", false, 35_040, |d| d.minute() % 15 == 0),
                ("30 1,2 * * *", true, 730, |d| {
                    d.minute() == 30 && matches!(d.hour(), 1 | 2)
                }),
                ("0 * * * *", false, 8760, |d| d.minute() == 0),
                ("0,30 2 * * 0", true, 103, |d| {
                    d.minute() % 30 == 0 && d.hour() == 2 && d.weekday() == Weekday::Sunday
                }),
            ],
        ),
        (
            // Daylight saving there moves the clocks by half an hour, at 02:00.
            "Australia/Lord_Howe",
            &[
                ("*/15 * * * *", false, 35_040, |d| d.minute() % 15 == 0),
                ("45 1 * * *", true, 365, |d| {
                    d.minute() == 45 && d.hour() == 1
                }),
                ("15 2 * * *", true, 365, |d| {
                    d.minute() == 15 && d.hour() == 2
                }),
            ],
        ),
        (
            // Chile springs forward at midnight: one day has no 00:00.
            "America/Santiago",
            &[
                ("0 0 * * *", true, 365, |d| d.minute() == 0 && d.hour() == 0),
                ("0 * * * *", false, 8760, |d| d.minute() == 0),
            ],
        ),
        (
            "Europe/Paris",
            &[
                ("0 9 * * 1-5", true, 261, |d| {
                    d.minute() == 0 && d.hour() == 9 && d.weekday().to_monday_one_offset() <= 5
                }),
                ("0 0 13 * FRI", true, 62, |d| {
                    d.minute() == 0
                        && d.hour() == 0
                        && (d.day() == 13 || d.weekday() == Weekday::Friday)
                }),
            ],
        ),
        (
            "UTC",
            &[("*/7 */5 * * *", false, 365 * 5 * 9, |d| {
                d.minute() % 7 == 0 && d.hour() % 5 == 0
            })],
        ),
    ];
    for (zone, cases) in zones {
        for (expr, fixed, count, matches) in cases {
            let rule = cron(expr, zone);
            let want = brute_force(zone, *fixed, *matches);
            let end = at("2027-01-01T00:00:00Z");
            let mut got = Vec::new();
            let mut t = at("2026-01-01T00:00:00Z");
            while let Some(next) = rule.next_after(t).filter(|&n| n <= end) {
                assert!(next > t, "{expr} in {zone}: {next} after {t}");
                got.push(next);
                t = next;
            }
            assert_eq!(want.len(), *count, "{expr} in {zone}: brute force");
            assert_eq!(got, want, "{expr} in {zone}");
        }
    }
}

#[test]
fn far_and_never() {
    // 2100 is not a leap year: the next 29 February after 2097 is in 2104.
    let leap = cron("0 0 29 2 *", "UTC");
    assert_eq!(
        leap.next_after(at("2097-03-01T00:00:00Z")),
        Some(at("2104-02-29T00:00:00Z"))
    );
    // Beyond the last representable year there is nothing, and the search ends.
    assert_eq!(
        cron("0 0 1 1 *", "UTC").next_after(at("9999-06-01T00:00:00Z")),
        None
    );
    assert_eq!(cron("* * * * *", "UTC").next_after(i64::MAX), None);
    // Many calls in a row stay cheap (no timing asserted: this only has to finish).
    let rule = cron("*/5 * * * *", "Europe/Paris");
    assert_eq!(
        slots(&rule, at("2026-01-01T00:00:00Z"), 50_000).len(),
        50_000
    );
}

#[test]
fn periods() {
    let anchor = at("2026-11-26T00:00:00Z");
    let rule = Rule::every("15m", anchor).unwrap();
    assert_eq!(
        rule,
        Rule::Every {
            period_ms: 15 * MINUTE_MS,
            anchor_ms: anchor
        }
    );
    assert_eq!(rule.next_after(anchor), Some(anchor + 15 * MINUTE_MS));
    assert_eq!(rule.next_after(anchor + 1), Some(anchor + 15 * MINUTE_MS));
    assert_eq!(
        rule.next_after(anchor + 15 * MINUTE_MS),
        Some(anchor + 30 * MINUTE_MS)
    );
    assert_eq!(rule.next_after(anchor - DAY_MS), Some(anchor));
    assert_eq!(
        Rule::every_ms(MINUTE_MS, i64::MAX - 10)
            .unwrap()
            .next_after(i64::MAX - 5),
        None
    );

    let period = |spec: &str| match Rule::every(spec, 0) {
        Ok(Rule::Every { period_ms, .. }) => Ok(period_ms),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e),
    };
    assert_eq!(period("1h30m"), Ok(90 * MINUTE_MS));
    assert_eq!(period(" 90s "), Ok(90 * SECOND_MS));
    assert_eq!(period("2d"), Ok(2 * DAY_MS));
    assert_eq!(period("1W2D"), Ok(9 * DAY_MS));
    assert_eq!(period("366d"), Ok(366 * DAY_MS));
    assert_eq!(period("1m"), Ok(MINUTE_MS));
    assert_eq!(period("59s"), Err(RuleError::PeriodTooShort));
    assert_eq!(period("0m"), Err(RuleError::PeriodTooShort));
    assert_eq!(period("367d"), Err(RuleError::PeriodTooLong));
    assert_eq!(period("53w"), Err(RuleError::PeriodTooLong));
    assert_eq!(period("99999999999999999w"), Err(RuleError::PeriodTooLong));
    for bad in [
        "5x", "", "m", "15", "1h 30m", "30m1h", "1h1h", "-5m", "1.5h",
    ] {
        assert!(
            matches!(period(bad), Err(RuleError::BadPeriod { .. })),
            "{bad:?}"
        );
    }
    assert_eq!(
        period("5x").unwrap_err().to_string(),
        "bad period \"5x\": use a number and s, m, h, d or w, like 15m or 1h30m"
    );
    assert_eq!(
        RuleError::PeriodTooShort.to_string(),
        "a period must be at least 1 minute"
    );
    assert_eq!(Rule::every_ms(59_999, 0), Err(RuleError::PeriodTooShort));
    assert_eq!(Rule::every_ms(60_500, 0), Err(RuleError::PeriodFraction));
    assert_eq!(
        Rule::every_ms(-MINUTE_MS, 0),
        Err(RuleError::PeriodTooShort)
    );
    assert_eq!(
        Rule::every_ms(367 * DAY_MS, 0),
        Err(RuleError::PeriodTooLong)
    );
}

#[test]
fn descriptions() {
    assert_eq!(
        cron("  0  9 * *\t1-5 ", "Europe/Paris").describe(),
        "cron 0 9 * * 1-5 (Europe/Paris)"
    );
    assert_eq!(Rule::every("15m", 0).unwrap().describe(), "every 15m");
    assert_eq!(format_period(90 * MINUTE_MS), "1h30m");
    assert_eq!(format_period(2 * DAY_MS), "2d");
    assert_eq!(format_period(90 * SECOND_MS), "1m30s");
    assert_eq!(format_period(DAY_MS + 1500), "1d1s500ms");
    assert_eq!(format_period(0), "0s");
    assert_eq!(format_period(-HOUR_MS), "-1h");
    let Rule::Cron(c) = cron("0 9 * * *", "UTC") else {
        panic!("not cron");
    };
    assert_eq!((c.expr(), c.zone()), ("0 9 * * *", "UTC"));
}

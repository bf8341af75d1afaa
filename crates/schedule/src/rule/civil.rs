//! Calendar arithmetic for cron rules: civil dates and times to the minute, days since the
//! epoch, and the bit sets a parsed field is kept as. Proleptic Gregorian, no time zones (the
//! rule converts to and from local time around these).

use jiff::civil::DateTime;

/// A local date and time to the minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Civil {
    pub(super) y: i32,
    pub(super) mo: u8,
    pub(super) d: u8,
    pub(super) h: u8,
    pub(super) mi: u8,
}

impl Civil {
    pub(super) fn month_start(y: i32, mo: u8) -> Civil {
        Civil {
            y,
            mo,
            d: 1,
            h: 0,
            mi: 0,
        }
    }

    /// The minute containing `local` (seconds of local time since 1970-01-01 00:00).
    pub(super) fn from_local_seconds(local: i64) -> Civil {
        let (y, mo, d) = civil_from_days(local.div_euclid(86_400));
        let second = local.rem_euclid(86_400);
        Civil {
            y,
            mo,
            d,
            h: (second / 3600) as u8,
            mi: (second % 3600 / 60) as u8,
        }
    }

    pub(super) fn local_seconds(self) -> i64 {
        days_from_civil(self.y, self.mo, self.d) * 86_400
            + i64::from(self.h) * 3600
            + i64::from(self.mi) * 60
    }

    pub(super) fn to_datetime(self) -> Result<DateTime, jiff::Error> {
        let year = i16::try_from(self.y).unwrap_or(i16::MAX);
        DateTime::new(
            year,
            self.mo as i8,
            self.d as i8,
            self.h as i8,
            self.mi as i8,
            0,
            0,
        )
    }
}

pub(super) fn has(set: u64, n: u8) -> bool {
    n < 64 && set & (1 << n) != 0
}

pub(super) fn next_bit(set: u64, from: u8) -> Option<u8> {
    if from >= 64 {
        return None;
    }
    let rest = set & (u64::MAX << from);
    (rest != 0).then(|| rest.trailing_zeros() as u8)
}

pub(super) fn is_leap(y: i32) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

pub(super) fn days_in_month(y: i32, mo: u8) -> u8 {
    match mo {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm), cheaper than building jiff dates for
/// every day the search steps over.
pub(super) fn days_from_civil(y: i32, mo: u8, d: u8) -> i64 {
    let y = i64::from(y) - i64::from(mo <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mo = i64::from(mo);
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(super) fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    ((yoe + era * 400 + i64::from(mo <= 2)) as i32, mo, d)
}

/// 0 = Sunday; 1970-01-01 was a Thursday.
pub(super) fn weekday(days: i64) -> u8 {
    (days + 4).rem_euclid(7) as u8
}

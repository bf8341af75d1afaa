#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use super::*;

const MIN: i64 = 60_000;
/// 2026-11-26 00:00:00 UTC: every test's "made at".
const T0: i64 = 1_795_651_200_000;

fn every_minute(missed: MissedRule) -> Schedule {
    Schedule {
        id: ScheduleId("s1".into()),
        rule: Rule::every_ms(MIN, T0).unwrap(),
        missed,
        from_ms: T0,
        recorded: None,
        active: true,
    }
}

/// A clock that moves the wall and monotonic clocks together unless told otherwise.
struct Clock {
    wall: i64,
    mono: Duration,
}

impl Clock {
    fn at(wall: i64) -> Clock {
        Clock {
            wall,
            mono: Duration::from_secs(1000),
        }
    }
    fn now(&self) -> Now {
        Now {
            wall_ms: self.wall,
            mono: self.mono,
        }
    }
    /// Time passes while awake.
    fn pass(&mut self, ms: i64) -> Now {
        self.wall += ms;
        self.mono += Duration::from_millis(u64::try_from(ms).unwrap());
        self.now()
    }
    /// The machine sleeps for `ms`: the monotonic clock stands still.
    fn sleep(&mut self, ms: i64) -> Now {
        self.wall += ms;
        self.now()
    }
    /// Someone sets the wall clock.
    fn set(&mut self, wall: i64) -> Now {
        self.wall = wall;
        self.mono += Duration::from_millis(10);
        self.now()
    }
}

fn runs(actions: &[Action]) -> Vec<i64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Run { slot, .. } => Some(*slot),
            Action::Skip { .. } => None,
        })
        .collect()
}

#[test]
fn an_awake_desktop_runs_every_slot_once_in_order() {
    let mut s = Scheduler::new();
    s.set_schedules([every_minute(MissedRule::RunOnce)]);
    let mut clock = Clock::at(T0 + 5_000);
    assert!(s.handle(clock.now()).is_empty());
    assert_eq!(s.poll_timeout(), Some(T0 + MIN));
    let mut ran = Vec::new();
    // Ticks every 10 s for ten minutes, as the driver's heartbeat does.
    for _ in 0..60 {
        let actions = s.handle(clock.pass(10_000));
        for a in &actions {
            assert!(matches!(a, Action::Run { missed: None, .. }), "{a:?}");
        }
        ran.extend(runs(&actions));
    }
    let expected: Vec<i64> = (1..=10).map(|k| T0 + k * MIN).collect();
    assert_eq!(ran, expected);
}

#[test]
fn slots_missed_while_off_are_reported_then_caught_up_once() {
    let mut first = every_minute(MissedRule::RunOnce);
    first.recorded = Some(T0 + 2 * MIN);
    let mut s = Scheduler::new();
    s.set_schedules([first.clone()]);
    // Started 3.5 minutes after the last recorded slot: slots 3, 4 and 5 fell while off.
    let actions = s.handle(Clock::at(T0 + 5 * MIN + 30_000).now());
    assert_eq!(
        actions,
        vec![Action::Run {
            schedule: first.id.clone(),
            slot: T0 + 5 * MIN,
            missed: Some(Missed {
                first: T0 + 3 * MIN,
                last: T0 + 5 * MIN,
                count: 3,
                capped: false,
                reason: Reason::Off,
            }),
        }]
    );

    let mut skip = first.clone();
    skip.missed = MissedRule::Skip;
    let mut s = Scheduler::new();
    s.set_schedules([skip.clone()]);
    let mut clock = Clock::at(T0 + 5 * MIN + 30_000);
    let actions = s.handle(clock.now());
    assert!(
        matches!(&actions[..], [Action::Skip { missed, .. }] if missed.count == 3 && missed.reason == Reason::Off),
        "{actions:?}"
    );
    // And the next slot, on time, runs as usual.
    assert!(s.handle(clock.pass(20_000)).is_empty());
    assert_eq!(runs(&s.handle(clock.pass(20_000))), vec![T0 + 6 * MIN]);
}

#[test]
fn a_slot_at_the_moment_of_start_is_on_time_and_one_before_it_is_missed() {
    let mut s = Scheduler::new();
    s.set_schedules([every_minute(MissedRule::Skip)]);
    assert_eq!(
        s.handle(Clock::at(T0 + MIN).now()),
        vec![Action::Run {
            schedule: ScheduleId("s1".into()),
            slot: T0 + MIN,
            missed: None,
        }]
    );
    let mut s = Scheduler::new();
    s.set_schedules([every_minute(MissedRule::Skip)]);
    assert!(matches!(
        &s.handle(Clock::at(T0 + MIN + 1).now())[..],
        [Action::Skip { missed, .. }] if missed.first == T0 + MIN && missed.count == 1
    ));
}

#[test]
fn waking_from_suspend_reports_the_slots_slept_through_as_missed() {
    let mut s = Scheduler::new();
    s.set_schedules([every_minute(MissedRule::RunOnce)]);
    let mut clock = Clock::at(T0 + 10_000);
    s.handle(clock.now());
    // Two hours asleep, woken 30 s after a slot: that slot fell during the sleep.
    let actions = s.handle(clock.sleep(2 * 60 * MIN + 20_000));
    assert_eq!(
        actions,
        vec![Action::Run {
            schedule: ScheduleId("s1".into()),
            slot: T0 + 120 * MIN,
            missed: Some(Missed {
                first: T0 + MIN,
                last: T0 + 120 * MIN,
                count: 120,
                capped: false,
                reason: Reason::Asleep,
            }),
        }]
    );
    // Awake again: the next slot is on time.
    let next = s.handle(clock.pass(MIN));
    assert_eq!(
        next,
        vec![Action::Run {
            schedule: ScheduleId("s1".into()),
            slot: T0 + 121 * MIN,
            missed: None,
        }]
    );
}

#[test]
fn a_short_nap_is_not_taken_for_a_suspend() {
    let mut s = Scheduler::new();
    s.set_schedules([every_minute(MissedRule::Skip)]);
    let mut clock = Clock::at(T0 + 10_000);
    s.handle(clock.now());
    // 40 s of sleep across the first slot: below JUMP, so it runs late rather than missed.
    let actions = s.handle(clock.sleep(55_000));
    assert_eq!(runs(&actions), vec![T0 + MIN]);
}

#[test]
fn a_busy_desktop_runs_the_latest_slot_and_reports_those_it_overtook() {
    let mut s = Scheduler::new();
    s.set_schedules([every_minute(MissedRule::Skip)]);
    let mut clock = Clock::at(T0 + 10_000);
    s.handle(clock.now());
    // No tick for three and a half minutes, but awake the whole time.
    let actions = s.handle(clock.pass(3 * MIN + 20_000));
    assert_eq!(
        actions,
        vec![Action::Run {
            schedule: ScheduleId("s1".into()),
            slot: T0 + 3 * MIN,
            missed: Some(Missed {
                first: T0 + MIN,
                last: T0 + 2 * MIN,
                count: 2,
                capped: false,
                reason: Reason::Late,
            }),
        }]
    );
}

#[test]
fn a_clock_set_back_repeats_nothing_and_one_set_forward_counts_as_missed() {
    let mut s = Scheduler::new();
    s.set_schedules([every_minute(MissedRule::Skip)]);
    let mut clock = Clock::at(T0 + 10_000);
    s.handle(clock.now());
    let mut ran = runs(&s.handle(clock.pass(3 * MIN)));
    // Set back an hour, then run forward past the same slots again.
    s.handle(clock.set(T0 - 60 * MIN + 10_000));
    for _ in 0..80 {
        ran.extend(runs(&s.handle(clock.pass(MIN))));
    }
    let unique: BTreeSet<i64> = ran.iter().copied().collect();
    assert_eq!(unique.len(), ran.len(), "a slot ran twice: {ran:?}");

    // Set forward a day: the day's slots are missed, not run.
    let before = clock.wall;
    let actions = s.handle(clock.set(before + 24 * 60 * MIN));
    assert!(
        matches!(&actions[..], [Action::Skip { missed, .. }] if missed.reason == Reason::Asleep && missed.count >= 1439),
        "{actions:?}"
    );
}

#[test]
fn paused_schedules_owe_nothing_and_resume_from_the_resume() {
    let mut paused = every_minute(MissedRule::RunOnce);
    paused.active = false;
    let mut s = Scheduler::new();
    s.set_schedules([paused.clone()]);
    let mut clock = Clock::at(T0 + 10_000);
    for _ in 0..30 {
        assert!(s.handle(clock.pass(10_000)).is_empty());
    }
    assert_eq!(s.poll_timeout(), None);
    // Resumed now: counted from the resume, so the paused minutes are neither run nor missed.
    let mut resumed = paused;
    resumed.active = true;
    resumed.from_ms = clock.wall;
    s.set_schedules([resumed]);
    assert!(s.handle(clock.pass(1_000)).is_empty());
    let actions = s.handle(clock.pass(MIN));
    assert!(
        matches!(&actions[..], [Action::Run { missed: None, .. }]),
        "{actions:?}"
    );
}

#[test]
fn a_slot_the_driver_could_not_record_is_handed_out_again() {
    let mut s = Scheduler::new();
    s.set_schedules([every_minute(MissedRule::RunOnce)]);
    let mut clock = Clock::at(T0 + 50_000);
    s.handle(clock.now());
    let actions = s.handle(clock.pass(10_000));
    assert_eq!(runs(&actions), vec![T0 + MIN]);
    assert!(s.handle(clock.pass(1_000)).is_empty());
    s.failed(&actions[0]);
    assert_eq!(runs(&s.handle(clock.pass(1_000))), vec![T0 + MIN]);
}

#[test]
fn a_year_off_is_counted_within_bounds() {
    let mut long = every_minute(MissedRule::RunOnce);
    long.recorded = Some(T0);
    let mut s = Scheduler::new();
    s.set_schedules([long]);
    let year = 365 * 24 * 60 * MIN;
    let actions = s.handle(Clock::at(T0 + year + 1).now());
    let [
        Action::Run {
            slot,
            missed: Some(m),
            ..
        },
    ] = &actions[..]
    else {
        panic!("{actions:?}");
    };
    assert_eq!(*slot, T0 + year);
    assert_eq!(m.last, T0 + year);
    assert!(m.capped);
    assert!(m.count >= MAX_COUNTED);
}

/// A seeded simulation: random ticks, sleeps, clock changes and crash-restarts (which keep
/// only what was recorded) against the two promises: no slot runs twice, and every slot that
/// fell is either run or reported missed.
#[test]
fn simulated_clocks_and_crashes_never_run_a_slot_twice_or_lose_one() {
    for seed in 0..200u64 {
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let rule = if seed % 2 == 0 {
            MissedRule::RunOnce
        } else {
            MissedRule::Skip
        };
        let mut schedule = every_minute(rule);
        let mut s = Scheduler::new();
        s.set_schedules([schedule.clone()]);
        let mut clock = Clock::at(T0 + 1);
        let mut ran: Vec<i64> = Vec::new();
        let mut settled: BTreeSet<i64> = BTreeSet::new();
        let mut max_wall = clock.wall;
        for _ in 0..300 {
            let now = match next(10) {
                0 => clock.sleep(i64::try_from(next(180)).unwrap() * MIN),
                1 => clock.set(clock.wall - i64::try_from(next(30)).unwrap() * MIN),
                2 => {
                    // Crash and restart: only the recorded slot survives.
                    s = Scheduler::new();
                    s.set_schedules([schedule.clone()]);
                    clock.pass(i64::try_from(next(20)).unwrap() * MIN)
                }
                _ => clock.pass(i64::try_from(next(90_000)).unwrap()),
            };
            max_wall = max_wall.max(now.wall_ms);
            for action in s.handle(now) {
                match &action {
                    Action::Run { slot, missed, .. } => {
                        assert!(!ran.contains(slot), "seed {seed}: slot {slot} ran twice");
                        ran.push(*slot);
                        if let Some(m) = missed {
                            assert!(m.first <= m.last && m.last <= *slot);
                            settled.extend((m.first..=m.last).step_by(60_000));
                        }
                        settled.insert(*slot);
                    }
                    Action::Skip { missed, .. } => {
                        settled.extend((missed.first..=missed.last).step_by(60_000));
                    }
                }
                schedule.recorded = Some(schedule.recorded.unwrap_or(0).max(action.slot()));
            }
            s.set_schedules([schedule.clone()]);
        }
        // Every slot up to the last one settled is accounted for: none was silently skipped.
        let last = schedule.recorded.unwrap_or(T0);
        for k in 1..=(last - T0) / MIN {
            assert!(
                settled.contains(&(T0 + k * MIN)),
                "seed {seed}: slot {k} was neither run nor reported missed"
            );
        }
        assert!(last <= max_wall);
    }
}

//! The open-loop schedule: operation `i` is due at `i / rate` seconds after the start, whatever
//! happened to the operations before it. Pure arithmetic; the load engine (`crate::load`) and
//! the benches' pacers sleep to each due time and launch.

use std::time::Duration;

/// Operations at a fixed rate over a warm-up followed by a measured window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Operations per second; finite and positive (checked by `new`).
    rate: f64,
    warmup: Duration,
    measured: Duration,
}

impl Schedule {
    pub fn new(rate: f64, warmup: Duration, measured: Duration) -> Result<Schedule, String> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!(
                "the rate must be a positive number of ops/s, not {rate}"
            ));
        }
        if measured.is_zero() {
            return Err("the duration must be positive".into());
        }
        let schedule = Schedule {
            rate,
            warmup,
            measured,
        };
        if schedule.total() > 1_000_000_000 {
            return Err(format!(
                "{rate} ops/s for {:?} is over a billion operations",
                warmup + measured
            ));
        }
        Ok(schedule)
    }

    /// How many operations are due in `[0, span)`: those `i` with `i / rate < span`.
    fn due_before(&self, span: Duration) -> u64 {
        // ceil(rate × span), computed so that an exact product (1000/s × 2 s) is not bumped up
        // by floating-point noise.
        let exact = self.rate * span.as_secs_f64();
        let rounded = exact.round();
        if (exact - rounded).abs() < 1e-6 {
            rounded as u64
        } else {
            exact.ceil() as u64
        }
    }

    /// Every operation of the run, warm-up included.
    pub fn total(&self) -> u64 {
        self.due_before(self.warmup + self.measured)
    }

    /// The operations due during the warm-up: indexes `0..warmup_ops()` are not measured.
    pub fn warmup_ops(&self) -> u64 {
        self.due_before(self.warmup)
    }

    /// The operations in the measured window, `warmup_ops()..total()`.
    pub fn measured_ops(&self) -> u64 {
        self.total() - self.warmup_ops()
    }

    pub fn is_measured(&self, i: u64) -> bool {
        i >= self.warmup_ops()
    }

    /// When operation `i` is due, from the start of the run.
    pub fn due(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// The start of the measured window, from the start of the run.
    pub fn warmup(&self) -> Duration {
        self.warmup
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn counts_are_rate_times_time() {
        let sch = Schedule::new(1000.0, s(2.0), s(60.0)).unwrap();
        assert_eq!(sch.total(), 62_000);
        assert_eq!(sch.warmup_ops(), 2_000);
        assert_eq!(sch.measured_ops(), 60_000);
        let third = Schedule::new(3.0, Duration::ZERO, s(1.0)).unwrap();
        assert_eq!(third.total(), 3);
        assert_eq!(third.due(2), s(2.0 / 3.0));
        // 2.5 ops/s for 1 s: due at 0 and 0.4 s (0.8 s is past the end).
        assert_eq!(
            Schedule::new(2.5, Duration::ZERO, s(1.0)).unwrap().total(),
            3
        );
        assert_eq!(
            Schedule::new(0.5, Duration::ZERO, s(3.0)).unwrap().total(),
            2
        );
    }

    #[test]
    fn every_op_is_due_inside_its_window() {
        for (rate, warmup, measured) in [(7.0, 0.3, 1.1), (1000.0, 1.0, 2.0), (333.3, 0.0, 0.9)] {
            let sch = Schedule::new(rate, s(warmup), s(measured)).unwrap();
            for i in 0..sch.total() {
                let due = sch.due(i);
                assert!(due < s(warmup + measured), "op {i} due at {due:?}");
                assert_eq!(sch.is_measured(i), due >= s(warmup), "op {i} at {due:?}");
            }
            assert!(sch.due(sch.total()) >= s(warmup + measured) - s(1e-9));
        }
    }

    #[test]
    fn due_times_are_evenly_spaced() {
        let sch = Schedule::new(200.0, Duration::ZERO, s(1.0)).unwrap();
        for i in 1..sch.total() {
            let gap = sch.due(i) - sch.due(i - 1);
            assert!((gap.as_secs_f64() - 0.005).abs() < 1e-9, "gap {gap:?}");
        }
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(Schedule::new(0.0, Duration::ZERO, s(1.0)).is_err());
        assert!(Schedule::new(-1.0, Duration::ZERO, s(1.0)).is_err());
        assert!(Schedule::new(f64::NAN, Duration::ZERO, s(1.0)).is_err());
        assert!(Schedule::new(10.0, Duration::ZERO, Duration::ZERO).is_err());
        assert!(Schedule::new(1e9, Duration::ZERO, s(10.0)).is_err());
    }
}

//! The agent's clocks. [`unix_now`] is wall-clock seconds for record
//! issue times and ages (compared across hosts), slewed so a step of this
//! host's clock cannot expire or future-date records, except the step NTP
//! makes when it first synchronizes the clock. [`mono_now`] is the
//! monotonic clock every deadline uses, the one the eBPF programs stamp.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix seconds now, for record issue times and ages (wall-clock by
/// nature: they are compared across hosts), read from [`SlewedClock`]: a
/// step of this host's wall clock (set by hand, or by NTP after a long
/// outage) moves it by at most 0.5 ms per second, so it neither expires
/// the records this agent holds nor future-dates the ones it signs. The
/// one step it takes whole is the kernel's clock becoming synchronized
/// (NTP's first fix, after a boot with a wrong clock): a wrong time at start
/// is not locked in. Every deadline in the agent uses the monotonic clock
/// instead.
#[must_use]
pub fn unix_now() -> u64 {
    static CLOCK: std::sync::Mutex<Option<SlewedClock>> = std::sync::Mutex::new(None);
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mono = std::time::Instant::now();
    let mut clock = CLOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let synced = kernel_clock_synced();
    let now = clock
        .get_or_insert_with(|| SlewedClock::new(wall, mono, synced))
        .read(wall, mono, synced);
    // Whole seconds; the value is a few billion at most.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let secs = now.max(0.0) as u64;
    secs
}

/// Microseconds since the epoch on this host's wall clock, unslewed: a
/// floor for new definition generations (which only ever go up anyway).
#[must_use]
pub fn wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Whether the kernel counts its clock as synchronized (`adjtimex`'s
/// `STA_UNSYNC` clear: an NTP daemon has set it). Setting the clock by hand
/// marks it unsynchronized.
fn kernel_clock_synced() -> bool {
    // SAFETY: an all-zero timex is valid; `modes` 0 only reads.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: `tx` is a valid timex to read into.
    let state = unsafe { libc::adjtimex(&raw mut tx) };
    state >= 0 && tx.status & libc::STA_UNSYNC == 0
}

/// The wall clock as of the first reading, carried forward by the
/// monotonic clock, and pulled towards the wall clock at most
/// [`SlewedClock::MAX_SLEW`] seconds per second (the kernel's own adjtime
/// limit): NTP's small corrections are followed, a step is absorbed slowly,
/// except when the clock turns synchronized: then the wall clock is taken
/// as it is.
#[derive(Debug, Clone, Copy)]
pub struct SlewedClock {
    base_wall: f64,
    base_mono: std::time::Instant,
    last_mono: std::time::Instant,
    /// Correction applied so far, seconds.
    offset: f64,
    /// Whether the clock was synchronized at the last reading.
    synced: bool,
}

impl SlewedClock {
    /// 500 ppm.
    pub const MAX_SLEW: f64 = 0.0005;

    #[must_use]
    pub fn new(wall: f64, mono: std::time::Instant, synced: bool) -> Self {
        Self {
            base_wall: wall,
            base_mono: mono,
            last_mono: mono,
            offset: 0.0,
            synced,
        }
    }

    /// Unix seconds at monotonic time `mono`, given the wall clock `wall`
    /// and whether the kernel counts it as synchronized.
    pub fn read(&mut self, wall: f64, mono: std::time::Instant, synced: bool) -> f64 {
        let mono = mono.max(self.last_mono);
        if synced && !self.synced {
            // NTP has just set the clock: its time, whatever the step.
            *self = Self::new(wall, mono, synced);
        }
        self.synced = synced;
        let carried = self.base_wall + (mono - self.base_mono).as_secs_f64() + self.offset;
        let room = (mono - self.last_mono).as_secs_f64() * Self::MAX_SLEW;
        self.offset += (wall - carried).clamp(-room, room);
        self.last_mono = mono;
        self.base_wall + (mono - self.base_mono).as_secs_f64() + self.offset
    }
}

/// `CLOCK_MONOTONIC` now: the clock `bpf_ktime_get_ns` reads (and
/// `std::time::Instant`), so it compares with the times the eBPF programs
/// record.
#[must_use]
pub fn mono_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_clock_step_moves_the_slewed_clock_by_500_ppm_at_most() {
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let start = 1_800_000_000.0;
        let mut c = SlewedClock::new(start, t0, true);
        // The wall clock runs normally: the clock follows it.
        assert!((c.read(start + 10.0, at(10), true) - (start + 10.0)).abs() < 1e-6);
        // Two hours forward at t=20 s...
        let jumped = c.read(start + 20.0 + 7200.0, at(20), true);
        assert!((jumped - (start + 20.0)).abs() < 0.01, "{}", jumped - start);
        let later = c.read(start + 620.0 + 7200.0, at(620), true);
        let ahead = later - (start + 620.0);
        assert!(
            ahead > 0.0 && ahead <= 620.0 * SlewedClock::MAX_SLEW + 1e-6,
            "pulled forward by at most 0.31 s over 620 s: {ahead}"
        );
        // ...and an hour back: absorbed the same way; it never runs back.
        let back = c.read(start + 621.0 - 3600.0, at(621), true);
        assert!(back >= later, "monotonic: {back} < {later}");
        // Small, NTP-sized offsets are caught up with.
        let mut c = SlewedClock::new(start, t0, true);
        let v = c.read(start + 1000.2, at(1000), true);
        assert!((v - (start + 1000.2)).abs() < 1e-6, "{}", v - start);
    }

    #[test]
    fn a_wrong_clock_at_start_is_left_when_ntp_synchronizes_it() {
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let right = 1_800_000_000.0;
        // Booted two hours behind, not synchronized: slewed as ever.
        let wrong = right - 7200.0;
        let mut c = SlewedClock::new(wrong, t0, false);
        let v = c.read(wrong + 10.0, at(10), false);
        assert!((v - (wrong + 10.0)).abs() < 1e-6);
        // NTP steps it and the kernel marks it synchronized: taken whole.
        let v = c.read(right + 20.0, at(20), true);
        assert!((v - (right + 20.0)).abs() < 1e-6, "{}", v - right);
        // A later step while synchronized is slewed again.
        let v = c.read(right + 30.0 + 3600.0, at(30), true);
        assert!((v - (right + 30.0)).abs() < 0.01, "{}", v - right);
        // Set by hand (unsynchronized), then synchronized again: taken.
        let v = c.read(right + 40.0 - 600.0, at(40), false);
        assert!((v - (right + 40.0)).abs() < 0.1, "{}", v - right);
        let v = c.read(right + 50.0, at(50), true);
        assert!((v - (right + 50.0)).abs() < 1e-6, "{}", v - right);
    }

    #[test]
    fn unix_now_is_close_to_the_wall_clock() {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        assert!(unix_now().abs_diff(wall) <= 1);
    }
}

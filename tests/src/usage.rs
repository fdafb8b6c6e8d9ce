//! A process's CPU time and memory, read from `/proc`.

use std::time::Duration;

/// A process's CPU time (user + system) and memory (KiB), from `/proc`.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub cpu: Duration,
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the peak resident size so far.
    pub peak_kib: u64,
}

impl Usage {
    /// Reads process `pid`'s figures now.
    #[must_use]
    pub fn of(pid: u32) -> Self {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_else(|e| panic!("reading /proc/{pid}/stat: {e}"));
        // The command name may hold spaces; the fields after it do not.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let ticks: u64 = fields
            .get(11..13)
            .expect("utime and stime in /proc/PID/stat")
            .iter()
            .map(|f| f.parse::<u64>().expect("a tick count"))
            .sum();
        // SAFETY: sysconf has no preconditions.
        let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
        let kib = |field: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
        };
        Self {
            cpu: Duration::from_millis(ticks * 1000 / hz),
            rss_kib: kib("VmRSS:"),
            peak_kib: kib("VmHWM:"),
        }
    }

    /// CPU used since `before`, as a share of one core over `wall`.
    #[must_use]
    pub fn cpu_share_since(&self, before: &Self, wall: Duration) -> f64 {
        self.cpu.saturating_sub(before.cpu).as_secs_f64() / wall.as_secs_f64()
    }
}

//! Randomness from the kernel: heartbeat nonces, and the jitter that keeps
//! a fleet's agents from acting in step.

use std::time::Duration;

/// 64 random bits from the kernel (`getrandom(2)`, which blocks only until
/// the pool is first seeded at boot).
#[must_use]
pub fn u64() -> u64 {
    let mut bytes = [0u8; 8];
    let mut filled = 0;
    while filled < bytes.len() {
        let rest = &mut bytes[filled..];
        // SAFETY: the pointer and length describe `rest`, which lives for
        // the call; getrandom writes at most that many bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        // -1 is EINTR: nothing else can happen with these arguments on a
        // kernel that runs eBPF (getrandom is from 3.17).
        if let Ok(n) = usize::try_from(n) {
            filled += n;
        }
    }
    u64::from_ne_bytes(bytes)
}

/// A point in `[0, span)` picked by `r` (uniform for a uniform `r`).
#[must_use]
pub fn within(span: Duration, r: u64) -> Duration {
    let nanos = u64::try_from(span.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(r % nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_stays_inside_the_span() {
        let span = Duration::from_millis(250);
        for r in [0, 1, 249_999_999, 250_000_000, u64::MAX] {
            assert!(within(span, r) < span);
        }
        assert_eq!(within(Duration::ZERO, 7), Duration::ZERO);
        assert_eq!(within(span, 250_000_001), Duration::from_nanos(1));
    }

    #[test]
    fn the_kernel_gives_different_numbers() {
        assert_ne!(u64(), u64());
    }
}

//! Preemption: a VIP whose record names a preferred host and a
//! `preempt_delay` goes back to that host once it has stood by, healthy,
//! for the delay. The owner hands it over gracefully (unbind, then the
//! guarded release) and keeps out of the election for the cooldown, so
//! the preferred host, which contends at once, wins it. Part of [`Core`]:
//! pure.

use std::time::Duration;

use tracing::info;

use super::core::Core;
use super::state::{Event, State};

impl Core {
    /// Notes since when VIP `id`'s preferred host has stood by (its state
    /// key, on its lease, says `STANDBY`), or that it does not.
    pub(super) fn track_preferred(&mut self, id: &str) {
        let now = self.now;
        let Some(v) = self.vips.get(id) else { return };
        let ready = match (&v.spec.record.priority, v.spec.record.preempt_delay) {
            (Some(preferred), Some(_)) if preferred != self.me() => {
                self.members.get(id).and_then(|m| m.states.get(preferred)) == Some(&State::Standby)
            }
            _ => false,
        };
        if let Some(v) = self.vips.get_mut(id) {
            v.preferred_since = if ready {
                Some(v.preferred_since.unwrap_or(now))
            } else {
                None
            };
        }
    }

    /// Hands over every VIP held here whose preferred host has stood by
    /// for its `preempt_delay`.
    pub(super) fn preempt_due(&mut self) {
        let now = self.now;
        let due: Vec<String> = self
            .vips
            .iter()
            .filter(|(_, v)| v.state == State::Activated)
            .filter(|(_, v)| {
                let delay = v
                    .spec
                    .record
                    .preempt_delay
                    .map(|d| Duration::from_secs(d.into()));
                matches!((v.preferred_since, delay), (Some(since), Some(d)) if now >= since + d)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let preferred = self.vips[&id]
                .spec
                .record
                .priority
                .clone()
                .unwrap_or_default();
            info!(vip = %id, preferred = %preferred, "the preferred host has stood by for the preempt delay: handing the VIP over");
            self.release(&id, true);
            let until = now + self.settings.cooldown;
            if let Some(v) = self.vips.get_mut(&id) {
                v.cooldown_until = Some(until);
                v.preferred_since = None;
            }
            self.transition(&id, Event::Demoted, "preempted by the preferred host");
        }
    }
}

//! The mesh's loop: reconcile on every registry change (against what the
//! last pass left in the kernel: only the difference is written, nothing
//! is dumped), and on relevant kernel events and resync ticks (after a
//! fresh dump).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use tokio::sync::watch;
use tracing::{info, warn};

use super::desired::DesiredSegment;
use super::reconcile::Pass;
use super::{Reconciler, desired};
use crate::cni::view::SegmentView;
use crate::kernel::events::{KernelEvent, KernelEvents};
use crate::registry::RegistryView;

/// Kernel events are gathered this long before one reconcile pass.
const EVENT_DEBOUNCE: Duration = Duration::from_millis(50);

/// Whether a kernel event may concern the mesh's devices. A removed
/// zero-MAC peer entry matters unless it is the echo of our own removal
/// (the known state no longer holds it). A removed unicast or neighbour
/// entry matters only when the known state still holds it: learned and
/// kernel-resolved entries come and go, and are not the mesh's.
fn relevant(event: &KernelEvent, segments: &BTreeSet<String>, reconciler: &Reconciler) -> bool {
    match event {
        KernelEvent::LinkRemoved { .. } => true,
        KernelEvent::FdbRemoved { ifindex, mac, dst } => match mac {
            Some(m) if m.is_zero() => dst.is_none_or(|d| {
                reconciler.known_device(*ifindex, |dev| dev.peers.contains(&d)) != Some(false)
            }),
            Some(m) => {
                reconciler.known_device(*ifindex, |dev| dev.unicast.contains_key(m)) == Some(true)
            }
            None => false,
        },
        KernelEvent::NeighbourRemoved { ifindex, ip } => {
            reconciler.known_device(*ifindex, |dev| dev.neighbours.contains_key(ip)) == Some(true)
        }
        KernelEvent::LinkChanged { name, .. } => {
            name.as_ref().is_some_and(|n| segments.contains(n))
        }
        KernelEvent::AddressRemoved { .. } => false,
    }
}

/// Writes the segment view for `linkmesh-cni` when it changed.
struct ViewWriter {
    state_dir: PathBuf,
    written: Option<SegmentView>,
}

impl ViewWriter {
    fn update(&mut self, view: SegmentView) {
        if self.written.as_ref() == Some(&view) {
            return;
        }
        match view.write(&self.state_dir) {
            Ok(()) => self.written = Some(view),
            // Repeats are held back by the log layer's rate limit.
            Err(e) => {
                warn!(error = %e, "writing the segment view for linkmesh-cni failed; retrying at the next pass");
            }
        }
    }
}

/// Reconciles on every registry change, relevant kernel event and resync
/// tick, until `stop` turns true; after each pass, keeps the segment view
/// in `state_dir` (if any) in step.
pub async fn run(
    reconciler: &Reconciler,
    rx: &mut watch::Receiver<RegistryView>,
    events: &mut KernelEvents,
    resync: Duration,
    stop: &mut watch::Receiver<bool>,
    state_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut views = state_dir.map(|state_dir| ViewWriter {
        state_dir,
        written: None,
    });
    let segments = &reconciler.local().segments;
    let mut last_problems: Vec<String> = Vec::new();
    let mut passes = 0u64;
    let mut resync_tick = tokio::time::interval(resync);
    resync_tick.tick().await;
    let mut pass = Pass::Dump;
    loop {
        // Computed under the borrow: the view is not copied.
        let (want, segment_view) = {
            let registry = rx.borrow_and_update();
            let want = desired(reconciler.local(), &registry);
            let view = views
                .is_some()
                .then(|| SegmentView::of(&reconciler.local().hostname, &registry, &want));
            (want, view)
        };
        let started = std::time::Instant::now();
        match reconciler.reconcile(&want, pass).await {
            Ok(report) => {
                let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                passes += 1;
                if report.applied > 0 || !report.errors.is_empty() || passes == 1 {
                    info!(
                        applied = report.applied,
                        failed = report.errors.len(),
                        netlink_writes = reconciler.netlink().writes(),
                        elapsed_us,
                        dumps = report.dumps,
                        segments = want.segments.len(),
                        peers = want
                            .segments
                            .values()
                            .map(DesiredSegment::peer_count)
                            .sum::<usize>(),
                        "mesh reconciled"
                    );
                }
                if report.problems != last_problems {
                    for p in &report.problems {
                        warn!(problem = %p, "mesh configuration problem");
                    }
                    last_problems = report.problems;
                }
            }
            Err(e) => {
                warn!(error = %e, "reading kernel state failed; retrying at the next change or resync");
            }
        }
        if let (Some(writer), Some(view)) = (views.as_mut(), segment_view) {
            writer.update(view);
        }
        // Registry changes are handled at once; kernel events (including
        // the echo of our own writes) are gathered for EVENT_DEBOUNCE first,
        // without holding up registry changes meanwhile.
        let mut kernel_due: Option<tokio::time::Instant> = None;
        let next = loop {
            let due = kernel_due.unwrap_or_else(|| tokio::time::Instant::now() + resync);
            tokio::select! {
                r = rx.changed() => {
                    if r.is_err() {
                        bail!("the registry sync task stopped");
                    }
                    // A kernel event pending still asks for a dump.
                    break Some(if kernel_due.is_some() { Pass::Dump } else { Pass::Known });
                }
                Some(event) = events.next() => {
                    if kernel_due.is_none() && relevant(&event, segments, reconciler) {
                        kernel_due = Some(tokio::time::Instant::now() + EVENT_DEBOUNCE);
                    }
                }
                () = tokio::time::sleep_until(due), if kernel_due.is_some() => break Some(Pass::Dump),
                _ = resync_tick.tick() => break Some(Pass::Dump),
                _ = stop.wait_for(|s| *s) => break None,
            }
        };
        match next {
            Some(p) => pass = p,
            None => return Ok(()),
        }
    }
}

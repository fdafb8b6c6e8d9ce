//! [`RegistryCache::update_view`] against [`RegistryCache::view`]: after
//! any sequence of puts and deletes, a view kept up to date key by key is
//! the view built whole. (Tests only; `cache.rs` holds the code.)

use std::time::Duration;

use proptest::prelude::*;

use super::cache::{Entry, RegistryCache, RegistryView};
use super::record::seal;
use super::{HostRecord, Keys, Secrets, SegmentSpec};
use crate::addr::MacAddr;

const NOW: u64 = 1_800_000_000;

fn secrets() -> Secrets {
    Secrets::from_text("cache-view-test-secret-123").expect("valid")
}

fn host(i: u8, address: u8) -> HostRecord {
    HostRecord {
        hostname: format!("h{i}"),
        address: format!("198.18.0.{address}").parse().expect("ip"),
        segments: [("blue".to_owned(), MacAddr([2, 0, 0, 0, 0, i]))].into(),
        agent_version: "t".into(),
        heartbeat_nonce: None,
        overlay: crate::registry::host::Overlay::default(),
    }
}

/// One change: a host or segment key, put (with a variant of its value)
/// or deleted, or junk written over it.
#[derive(Clone, Debug)]
enum Change {
    Host { i: u8, address: u8 },
    Segment { i: u8, vni: u32 },
    Junk { i: u8 },
    Delete { i: u8, segment: bool },
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0u8..6, 1u8..4).prop_map(|(i, address)| Change::Host { i, address }),
        (0u8..3, 1u32..4).prop_map(|(i, vni)| Change::Segment { i, vni }),
        (0u8..6).prop_map(|i| Change::Junk { i }),
        (0u8..6, any::<bool>()).prop_map(|(i, segment)| Change::Delete { i, segment }),
    ]
}

proptest! {
    #[test]
    fn a_view_kept_key_by_key_is_the_whole_view(changes in proptest::collection::vec(change(), 1..40)) {
        let keys = Keys::new("/lm");
        let mut cache = RegistryCache::new(keys.clone(), secrets(), Duration::from_hours(1));
        let mut view = RegistryView::default();
        for (rev, c) in (1i64..).zip(changes) {
            let (key, value) = match c {
                Change::Host { i, address } => {
                    let key = keys.host(&format!("h{i}"));
                    let v = seal(&secrets(), &key, 5, NOW, &host(i, address)).expect("seal");
                    (key, Some(v))
                }
                Change::Segment { i, vni } => {
                    let key = keys.segment(&format!("s{i}"));
                    let v = seal(&secrets(), &key, 0, NOW, &SegmentSpec::new(vni)).expect("seal");
                    (key, Some(v))
                }
                Change::Junk { i } => (keys.host(&format!("h{i}")), Some(b"junk".to_vec())),
                Change::Delete { i, segment } => {
                    let key = if segment { keys.segment(&format!("s{i}")) } else { keys.host(&format!("h{i}")) };
                    (key, None)
                }
            };
            let changed = match &value {
                Some(v) => cache.put(
                    Entry { key: &key, value: v, lease: if key.contains("/hosts/") { 5 } else { 0 }, mod_revision: rev, create_revision: rev },
                    NOW,
                ),
                None => cache.delete(&key),
            };
            if changed {
                prop_assert!(cache.update_view(&mut view, &key, NOW).is_some());
            }
            prop_assert_eq!(&view, &cache.view(NOW));
        }
    }
}

#[test]
fn hosts_and_segments_enter_and_leave_the_view_key_by_key() {
    let keys = Keys::new("/lm");
    let mut cache = RegistryCache::new(keys.clone(), secrets(), Duration::from_hours(1));
    let mut view = RegistryView::default();
    let hkey = keys.host("h1");
    let hv = seal(&secrets(), &hkey, 5, NOW, &host(1, 1)).expect("seal");
    let skey = keys.segment("s0");
    let sv = seal(&secrets(), &skey, 0, NOW, &SegmentSpec::new(7)).expect("seal");
    for (key, value, lease) in [(&hkey, &hv, 5), (&skey, &sv, 0)] {
        let entry = Entry {
            key,
            value,
            lease,
            mod_revision: 1,
            create_revision: 1,
        };
        assert!(cache.put(entry, NOW), "{key} enters the cache");
        assert_eq!(cache.update_view(&mut view, key, NOW), Some(true));
    }
    assert!(view.hosts.contains_key("h1") && view.segments.contains_key("s0"));
    assert_eq!(view, cache.view(NOW));
    assert!(cache.delete(&hkey));
    assert_eq!(cache.update_view(&mut view, &hkey, NOW), Some(true));
    assert_eq!(cache.update_view(&mut view, "/lm/elsewhere", NOW), None);
    assert_eq!(view, cache.view(NOW));
}

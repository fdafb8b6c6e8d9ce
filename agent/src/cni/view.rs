//! The segment view: what the agent tells `linkmesh-cni` about this
//! host's segments, in `<state dir>/segments.json`. The plugin holds no
//! etcd credentials and reads no registry: it learns from this file which
//! segments exist and which this host joined with a bridge, then checks
//! the kernel for that bridge itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::mesh::Desired;
use crate::registry::RegistryView;

/// The file's name in the agent's state directory.
pub const FILE_NAME: &str = "segments.json";

/// The view's path under `state_dir`.
#[must_use]
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Every segment defined in the registry, and what this host made of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentView {
    pub host: String,
    pub segments: BTreeMap<String, SegmentState>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentState {
    pub vni: u32,
    /// This host joined it and builds its device.
    pub joined: bool,
    /// The bridge workloads join, when joined with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// The device's MTU, when joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The namespace the device was moved into, when joined so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

impl SegmentView {
    /// The view of `registry`'s segments from `host`, whose desired state
    /// is `desired` (a segment joined but left out of it for a problem is
    /// not joined here).
    #[must_use]
    pub fn of(host: &str, registry: &RegistryView, desired: &Desired) -> Self {
        let segments = registry
            .segments
            .iter()
            .map(|(name, spec)| {
                let joined = desired.segments.get(name);
                let state = SegmentState {
                    vni: spec.vni,
                    joined: joined.is_some(),
                    bridge: joined.and_then(|d| d.bridge.clone()),
                    mtu: joined.map(|d| d.mtu),
                    netns: joined.and_then(|d| d.netns.clone()),
                };
                (name.clone(), state)
            })
            .collect();
        Self {
            host: host.to_owned(),
            segments,
        }
    }

    /// Reads the view the agent wrote.
    pub fn read(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read(path)?;
        serde_json::from_slice(&text).map_err(std::io::Error::other)
    }

    /// Writes the view into `state_dir` for the plugin.
    pub fn write(&self, state_dir: &Path) -> Result<(), crate::files::WriteError> {
        // Strings, numbers and maps with string keys: encoding cannot fail.
        let text = serde_json::to_vec_pretty(self).unwrap_or_default();
        crate::files::replace(state_dir, FILE_NAME, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::desired::{LocalConfig, Underlay, desired};
    use crate::registry::SegmentSpec;

    #[test]
    fn defined_joined_and_bridged_segments_are_told_apart() {
        let registry = RegistryView {
            hosts: BTreeMap::new(),
            segments: [
                (
                    "blue".to_owned(),
                    SegmentSpec {
                        bridge: Some("lm-blue".into()),
                        ..SegmentSpec::new(100)
                    },
                ),
                ("red".to_owned(), SegmentSpec::new(200)),
                ("green".to_owned(), SegmentSpec::new(300)),
            ]
            .into(),
        };
        let local = LocalConfig {
            hostname: "h1".into(),
            underlay: Underlay {
                address: "198.18.0.1".parse().expect("ip"),
                ifindex: 2,
                ifname: "eth0".into(),
                mtu: 1500,
            },
            segments: ["blue".to_owned(), "red".to_owned(), "gone".to_owned()].into(),
            bridge: None,
            overlay: BTreeMap::new(),
        };
        let view = SegmentView::of("h1", &registry, &desired(&local, &registry));
        assert_eq!(view.segments.len(), 3, "only what the registry defines");
        let blue = &view.segments["blue"];
        assert!(blue.joined);
        assert_eq!(blue.bridge.as_deref(), Some("lm-blue"));
        assert_eq!(blue.mtu, Some(1450));
        assert!(view.segments["red"].joined);
        assert_eq!(view.segments["red"].bridge, None);
        assert!(!view.segments["green"].joined);

        let dir = tempfile::tempdir().expect("a temp dir");
        let file = path(dir.path());
        view.write(dir.path()).expect("write");
        assert_eq!(SegmentView::read(&file).expect("read"), view);
        std::fs::write(&file, b"{not json").expect("garble");
        assert!(SegmentView::read(&file).is_err());
    }
}

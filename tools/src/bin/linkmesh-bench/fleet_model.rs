//! The scale benchmark's fleet model: from what one agent was measured to
//! ask of etcd, the etcd load of a whole fleet, printed beside etcd's
//! published guidance.
//!
//! etcd's figures used, from its v3.4 documentation:
//! - https://etcd.io/docs/v3.4/op-guide/hardware/, "Example hardware
//!   configurations": "An xLarge cluster serves more than 1,500 clients,
//!   more than 10,000 of requests per second, and stores more than 1GB
//!   data" (16 vCPUs, 60-64 GB per member); "Large": fewer than 1,500
//!   clients, fewer than 10,000 requests per second. "Network": "1GbE is
//!   sufficient for common etcd deployments."
//! - https://etcd.io/docs/v3.4/op-guide/performance/: "a three member etcd
//!   cluster finishes a request in less than one millisecond under light
//!   load, and can complete more than 30,000 requests per second under heavy
//!   load" (n-4 class machines); its benchmark (3 members of 8 vCPUs, 1,000
//!   clients on 100 connections, 256-byte values) reaches 44,341-50,104
//!   writes/s and 141,578-185,758 reads/s.
//! - https://etcd.io/docs/v3.4/dev-guide/limit/: "By default, the maximum
//!   size of any request is 1.5 MiB"; "The default storage size limit is 2
//!   GB".
//!
//! etcd publishes no figure for watch events delivered per second: each is
//! a gRPC message out, so the model sets their bytes against the network.

/// The fleet the model extrapolates to.
pub const FLEET: f64 = 10_000.0;
/// Agents re-sign their record every quarter of `--max-record-age`
/// (default 3600 s; README, "Agent options"): a change every 900 s per host.
const RESIGN_EVERY_S: f64 = 3600.0 / 4.0;
/// Hardware page: the xLarge cluster's clients and requests per second.
const XLARGE_CLIENTS: f64 = 1_500.0;
const XLARGE_REQUESTS: f64 = 10_000.0;
/// Performance page: a 3-member cluster under heavy load, requests/s.
const HEAVY_REQUESTS: f64 = 30_000.0;
/// Hardware page: 1GbE, in bytes per second.
const ONE_GBE: f64 = 125e6;

/// etcd's gRPC counters at one moment, or their difference over a span
/// (or that per second).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EtcdCounters {
    /// gRPC messages etcd received (unary calls and stream messages).
    pub requests: f64,
    /// Protobuf bytes etcd received from clients.
    pub bytes_in: f64,
    /// Protobuf bytes etcd sent to clients.
    pub bytes_out: f64,
}

impl EtcdCounters {
    #[must_use]
    pub fn minus(self, other: Self) -> Self {
        Self {
            requests: self.requests - other.requests,
            bytes_in: self.bytes_in - other.bytes_in,
            bytes_out: self.bytes_out - other.bytes_out,
        }
    }

    #[must_use]
    pub fn scaled(self, k: f64) -> Self {
        Self {
            requests: self.requests * k,
            bytes_in: self.bytes_in * k,
            bytes_out: self.bytes_out * k,
        }
    }
}

/// What one registry change costs etcd per agent watching: the traffic
/// while `changes` changes were timed, less what the writer itself cost
/// (the same writes where nobody watches) and less the steady-state traffic
/// over both spans.
#[must_use]
pub fn per_change(
    timed: EtcdCounters,
    timed_s: f64,
    unwatched: EtcdCounters,
    unwatched_s: f64,
    steady_per_s: EtcdCounters,
    changes: usize,
) -> EtcdCounters {
    #[expect(clippy::cast_precision_loss, reason = "a small count")]
    let changes = changes.max(1) as f64;
    let c = timed
        .minus(steady_per_s.scaled(timed_s))
        .minus(unwatched.minus(steady_per_s.scaled(unwatched_s)))
        .scaled(1.0 / changes);
    EtcdCounters {
        requests: c.requests.max(0.0),
        bytes_in: c.bytes_in.max(0.0),
        bytes_out: c.bytes_out.max(0.0),
    }
}

/// The etcd load of a fleet, per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FleetLoad {
    /// Registry changes (joins, leaves, re-signs) across the fleet.
    pub changes: f64,
    /// gRPC messages etcd receives.
    pub requests: f64,
    /// Watch events etcd sends (every change, to every agent).
    pub events: f64,
    pub bytes_out: f64,
    pub bytes_in: f64,
}

/// The etcd load of `agents` agents each like the measured one (`steady`:
/// its steady state per second; `change`: its cost per registry change),
/// with `churn` changes per second across the fleet. Each change is one
/// write to etcd and is delivered to every agent.
#[must_use]
pub fn fleet_load(
    agents: f64,
    steady: EtcdCounters,
    change: EtcdCounters,
    churn: f64,
) -> FleetLoad {
    FleetLoad {
        changes: churn,
        requests: agents * steady.requests + churn * (1.0 + agents * change.requests),
        events: churn * agents,
        bytes_out: agents * steady.bytes_out + churn * agents * change.bytes_out,
        bytes_in: agents * steady.bytes_in + churn * agents * change.bytes_in,
    }
}

/// Prints the model for the agent measured with `n` peers (`steady` per
/// second, `change` per registry change; one record takes `record_bytes`).
pub fn print(n: usize, steady: EtcdCounters, change: EtcdCounters, record_bytes: usize) {
    let resign = FLEET / RESIGN_EVERY_S;
    let restart = 2.0 * FLEET / 3600.0;
    let scenarios = [
        ("steady state only", 0.0),
        ("+ re-signing (each host every 900 s)", resign),
        ("+ 1 join or leave per second", resign + 1.0),
        (
            "+ rolling restart in 1 h (2 per host)",
            resign + 1.0 + restart,
        ),
    ];
    println!();
    println!(
        "fleet model: {FLEET:.0} agents, each like the one at N={n} (its steady state, and {:.0} B out / {:.3} requests in per change)",
        change.bytes_out, change.requests
    );
    println!(
        "{:<40} {:>10} {:>12} {:>14} {:>10} {:>10}",
        "churn", "changes/s", "requests/s", "watch events/s", "MB/s out", "MB/s in"
    );
    let mut busiest = fleet_load(FLEET, steady, change, 0.0);
    for (name, churn) in scenarios {
        let f = fleet_load(FLEET, steady, change, churn);
        println!(
            "{:<40} {:>10.1} {:>12.0} {:>14.0} {:>10.2} {:>10.2}",
            name,
            f.changes,
            f.requests,
            f.events,
            f.bytes_out / 1e6,
            f.bytes_in / 1e6
        );
        busiest = f;
    }
    #[expect(clippy::cast_precision_loss, reason = "a size for display")]
    let registry_mb = FLEET * record_bytes as f64 / 1e6;
    println!("against etcd's published guidance (v3.4 documentation), for the last line:");
    println!(
        "  hardware page, \"xLarge cluster\" (16 vCPUs, 60-64 GB per member): \"more than 1,500 clients, more than 10,000 of requests per second\":\n    {FLEET:.0} clients are {:.1}x 1,500; {:.0} requests/s are {:.2}x 10,000",
        FLEET / XLARGE_CLIENTS,
        busiest.requests,
        busiest.requests / XLARGE_REQUESTS
    );
    println!(
        "  performance page: a 3-member cluster \"can complete more than 30,000 requests per second under heavy load\":\n    {:.0} requests/s are {:.1}% of 30,000",
        busiest.requests,
        busiest.requests * 100.0 / HEAVY_REQUESTS
    );
    println!(
        "  hardware page: \"1GbE is sufficient for common etcd deployments\":\n    {:.2} MB/s out of etcd are {:.1}% of 1 Gbit/s (125 MB/s), before gRPC/HTTP/2/TCP framing",
        busiest.bytes_out / 1e6,
        busiest.bytes_out * 100.0 / ONE_GBE
    );
    println!(
        "  system limits page: 1.5 MiB per request, a 2 GB storage quota by default:\n    one host record is {record_bytes} B; {FLEET:.0} records are {registry_mb:.1} MB"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(requests: f64, bytes_in: f64, bytes_out: f64) -> EtcdCounters {
        EtcdCounters {
            requests,
            bytes_in,
            bytes_out,
        }
    }

    fn assert_close(got: f64, want: f64) {
        assert!((got - want).abs() < 1e-6, "{got} != {want}");
    }

    #[test]
    fn the_fleet_is_the_steady_state_times_agents_plus_the_fan_out() {
        let steady = counters(0.5, 50.0, 100.0);
        let change = counters(0.0, 0.0, 400.0);
        let quiet = fleet_load(10_000.0, steady, change, 0.0);
        assert_close(quiet.requests, 5_000.0);
        assert_close(quiet.events, 0.0);
        assert_close(quiet.bytes_out, 1_000_000.0);
        assert_close(quiet.bytes_in, 500_000.0);
        let busy = fleet_load(10_000.0, steady, change, 2.0);
        assert_close(busy.requests, 5_002.0);
        assert_close(busy.events, 20_000.0);
        assert_close(busy.bytes_out, 1_000_000.0 + 8_000_000.0);
        assert_close(busy.bytes_in, 500_000.0);
        let chatty = fleet_load(100.0, steady, counters(1.0, 10.0, 400.0), 1.0);
        assert_close(chatty.requests, 50.0 + 1.0 + 100.0);
        assert_close(chatty.bytes_in, 5_000.0 + 1_000.0);
    }

    #[test]
    fn a_change_costs_what_is_left_after_the_writer_and_the_steady_state() {
        let steady = counters(1.0, 10.0, 20.0);
        // 10 changes over 2 s: writer 10 requests, 1000 B in, 300 B out;
        // events 10 x 400 B out; steady 2 requests, 20 B in, 40 B out.
        let timed = counters(12.0, 1020.0, 4340.0);
        // The same writes unwatched over 1 s.
        let unwatched = counters(11.0, 1010.0, 320.0);
        let c = per_change(timed, 2.0, unwatched, 1.0, steady, 10);
        assert_close(c.bytes_out, 400.0);
        assert_close(c.requests, 0.0);
        assert_close(c.bytes_in, 0.0);
        // Noise never makes a cost negative.
        let c = per_change(counters(0.0, 0.0, 0.0), 5.0, unwatched, 1.0, steady, 10);
        assert_eq!(c, counters(0.0, 0.0, 0.0));
    }
}

//! The master's Prometheus metrics (`GET /metrics` on `metrics_bind`).
//!
//! Counters and histograms are updated where things happen (a job
//! published, a return stored, a store flush, an API request); gauges
//! that describe a state (minions up, queue depths) are read when a
//! scrape asks, so nothing is maintained for them in between.
//!
//! Jobs in flight are tracked in memory from publication to their last
//! expected return or their deadline, so "finished" and its duration cost
//! no store read. After a restart the jobs published before it are not
//! counted as finished (Prometheus counters start again at a restart).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use halite_proto::Jid;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Labels naming a function.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Fun {
    fun: String,
}

/// Labels naming a function and how its job or return ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunResult {
    fun: String,
    result: &'static str,
}

/// Labels of a stage that ended on a minion.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Stage {
    stage: String,
    status: String,
}

/// Labels of an API request: the route as declared (`/v1/jobs/{jid}`),
/// never the raw path, so the label set stays bounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    method: String,
    route: String,
    status: u16,
}

/// Labels naming a store operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    operation: &'static str,
}

/// Labels naming a minion state or a queue.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Name {
    name: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latencies from 0.5 ms to about 8 minutes.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 20))
}

/// A job in flight, until its last expected return or its deadline.
struct Open {
    fun: String,
    expected: usize,
    returned: usize,
    failed: usize,
    issued_at: u64,
    deadline: u64,
}

/// Every metric the master exports.
pub struct Metrics {
    registry: Registry,
    submitted: Family<Fun, Counter>,
    finished: Family<FunResult, Counter>,
    returns: Family<FunResult, Counter>,
    job_seconds: Histograms<FunResult>,
    return_seconds: Histograms<Fun>,
    stage_seconds: Histograms<Stage>,
    requests: Histograms<Request>,
    store_seconds: Histograms<Operation>,
    minions: Family<Name, Gauge>,
    queued: Family<Name, Gauge>,
    driving: Gauge,
    open: Mutex<HashMap<Jid, Open>>,
}

/// A point-in-time reading of what the gauges show, taken at scrape.
pub struct Gauges {
    /// Minions up.
    pub minions_up: usize,
    /// Accepted minions not up.
    pub minions_down: usize,
    /// Returns verified and waiting for the collector.
    pub returns_queued: usize,
    /// Jobs whose later batches are still to publish.
    pub batches_pending: usize,
    /// Notifications waiting to be delivered.
    pub deliveries_pending: usize,
    /// Rollouts not finished.
    pub rollouts_active: usize,
    /// Whether this master holds the drivers' lease.
    pub driving: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric under `halite_`.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("halite");
        let submitted = Family::<Fun, Counter>::default();
        registry.register(
            "jobs_submitted",
            "Jobs published, by function",
            submitted.clone(),
        );
        let finished = Family::<FunResult, Counter>::default();
        registry.register(
            "jobs_finished",
            "Jobs whose every expected minion returned (result success or failed) or whose \
             deadline passed first (incomplete)",
            finished.clone(),
        );
        let returns = Family::<FunResult, Counter>::default();
        registry.register(
            "returns",
            "Returns stored, by function and result",
            returns.clone(),
        );
        let job_seconds: Histograms<FunResult> = Family::new_with_constructor(seconds);
        registry.register_with_unit(
            "job_duration",
            "From publication to the last expected return (or the deadline)",
            Unit::Seconds,
            job_seconds.clone(),
        );
        let return_seconds: Histograms<Fun> = Family::new_with_constructor(seconds);
        registry.register_with_unit(
            "return_duration",
            "How long the function ran on the minion, from the return's own times",
            Unit::Seconds,
            return_seconds.clone(),
        );
        let stage_seconds: Histograms<Stage> = Family::new_with_constructor(seconds);
        registry.register_with_unit(
            "stage_duration",
            "Stages of deploy modules as minions report their end",
            Unit::Seconds,
            stage_seconds.clone(),
        );
        let requests: Histograms<Request> = Family::new_with_constructor(seconds);
        registry.register_with_unit(
            "http_request_duration",
            "API and portal requests, by route template and status",
            Unit::Seconds,
            requests.clone(),
        );
        let store_seconds: Histograms<Operation> = Family::new_with_constructor(seconds);
        registry.register_with_unit(
            "store_operation_duration",
            "Store flushes and the reads behind listings and job views",
            Unit::Seconds,
            store_seconds.clone(),
        );
        let minions = Family::<Name, Gauge>::default();
        registry.register(
            "minions",
            "Accepted minions by state (up or down)",
            minions.clone(),
        );
        let queued = Family::<Name, Gauge>::default();
        registry.register("queue_depth", "Work waiting, by queue", queued.clone());
        let driving = Gauge::default();
        registry.register(
            "driving",
            "1 while this master holds the lease to drive rollouts, schedules and batches \
             (always on the embedded store; one master at a time on a shared one)",
            driving.clone(),
        );
        Metrics {
            registry,
            submitted,
            finished,
            returns,
            job_seconds,
            return_seconds,
            stage_seconds,
            requests,
            store_seconds,
            minions,
            queued,
            driving,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A job was published to `expected` minions; it finishes at its last
    /// return or at `deadline` (unix ms).
    pub fn job_published(
        &self,
        jid: &Jid,
        fun: &str,
        expected: usize,
        issued_at: u64,
        deadline: u64,
    ) {
        self.submitted
            .get_or_create(&Fun {
                fun: fun.to_owned(),
            })
            .inc();
        if expected == 0 {
            return;
        }
        self.open.lock().unwrap_or_else(|e| e.into_inner()).insert(
            jid.clone(),
            Open {
                fun: fun.to_owned(),
                expected,
                returned: 0,
                failed: 0,
                issued_at,
                deadline,
            },
        );
    }

    /// A new return was stored at `now` (unix ms).
    pub fn return_stored(&self, jid: &Jid, ret: &halite_model::ReturnRecord, now: u64) {
        let result = if ret.success { "success" } else { "failed" };
        self.returns
            .get_or_create(&FunResult {
                fun: ret.fun.clone(),
                result,
            })
            .inc();
        self.return_seconds
            .get_or_create(&Fun {
                fun: ret.fun.clone(),
            })
            .observe(ms_to_seconds(
                ret.finished_at.saturating_sub(ret.started_at),
            ));
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let Some(job) = open.get_mut(jid) else {
            return;
        };
        job.returned += 1;
        job.failed += usize::from(!ret.success);
        if job.returned >= job.expected {
            if let Some(job) = open.remove(jid) {
                let result = if job.failed > 0 { "failed" } else { "success" };
                self.finish(job, result, now);
            }
        }
    }

    /// Finishes, as incomplete, the jobs whose deadline passed before
    /// every expected minion returned.
    pub fn sweep(&self, now: u64) {
        let expired: Vec<Open> = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            open.extract_if(|_, job| job.deadline <= now)
                .map(|(_, job)| job)
                .collect()
        };
        for job in expired {
            self.finish(job, "incomplete", now);
        }
    }

    fn finish(&self, job: Open, result: &'static str, now: u64) {
        let labels = FunResult {
            fun: job.fun,
            result,
        };
        self.job_seconds
            .get_or_create(&labels)
            .observe(ms_to_seconds(now.saturating_sub(job.issued_at)));
        self.finished.get_or_create(&labels).inc();
    }

    /// A minion reported the end of a stage.
    pub fn stage_ended(&self, stage: &str, status: &str, duration_ms: u64) {
        self.stage_seconds
            .get_or_create(&Stage {
                stage: stage.to_owned(),
                status: status.to_owned(),
            })
            .observe(ms_to_seconds(duration_ms));
    }

    /// An API request was answered.
    pub fn request_served(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&Request {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .observe(took.as_secs_f64());
    }

    /// A store operation took `took` (`flush`, `list_jobs`, `job_view`…).
    pub fn store_operation(&self, operation: &'static str, took: Duration) {
        self.store_seconds
            .get_or_create(&Operation { operation })
            .observe(took.as_secs_f64());
    }

    /// The text exposition format, gauges set from `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let set = |family: &Family<Name, Gauge>, name: &'static str, value: usize| {
            family
                .get_or_create(&Name { name })
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        set(&self.minions, "up", gauges.minions_up);
        set(&self.minions, "down", gauges.minions_down);
        set(&self.queued, "returns", gauges.returns_queued);
        set(&self.queued, "batches", gauges.batches_pending);
        set(&self.queued, "deliveries", gauges.deliveries_pending);
        set(&self.queued, "rollouts", gauges.rollouts_active);
        self.driving.set(i64::from(gauges.driving));
        set(
            &self.queued,
            "jobs_in_flight",
            self.open.lock().unwrap_or_else(|e| e.into_inner()).len(),
        );
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

fn ms_to_seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ret(fun: &str, success: bool) -> halite_model::ReturnRecord {
        halite_model::ReturnRecord {
            id: "web01".into(),
            fun: fun.into(),
            success,
            retcode: i32::from(!success),
            data: serde_json::Value::Null,
            started_at: 1_000,
            finished_at: 1_250,
            stored_at: 1_300,
        }
    }

    fn gauges() -> Gauges {
        Gauges {
            minions_up: 3,
            minions_down: 1,
            returns_queued: 0,
            batches_pending: 0,
            deliveries_pending: 2,
            rollouts_active: 0,
            driving: true,
        }
    }

    fn line<'a>(text: &'a str, start: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(start))
    }

    #[test]
    fn a_job_finishes_at_its_last_return_or_as_incomplete_at_its_deadline() {
        let metrics = Metrics::new();
        let done = Jid::from_unix_us(1_700_000_000_000_000);
        let late = Jid::from_unix_us(1_700_000_001_000_000);
        metrics.job_published(&done, "test.ping", 2, 1_000, 9_000);
        metrics.job_published(&late, "cmd.run", 2, 1_000, 9_000);
        metrics.return_stored(&done, &ret("test.ping", true), 1_100);
        metrics.return_stored(&late, &ret("cmd.run", false), 1_100);
        let text = metrics.render(&gauges());
        assert!(
            line(&text, "halite_jobs_finished_total").is_none(),
            "{text}"
        );
        metrics.return_stored(&done, &ret("test.ping", true), 1_500);
        metrics.sweep(8_999);
        let text = metrics.render(&gauges());
        assert_eq!(
            line(&text, "halite_jobs_finished_total{"),
            Some("halite_jobs_finished_total{fun=\"test.ping\",result=\"success\"} 1")
        );
        metrics.sweep(9_000);
        let text = metrics.render(&gauges());
        assert!(
            text.contains("halite_jobs_finished_total{fun=\"cmd.run\",result=\"incomplete\"} 1")
        );
        assert!(text.contains("halite_jobs_submitted_total{fun=\"cmd.run\"} 1"));
        assert!(text.contains("halite_returns_total{fun=\"cmd.run\",result=\"failed\"} 1"));
        assert!(text
            .contains("halite_job_duration_seconds_count{fun=\"test.ping\",result=\"success\"} 1"));
        assert!(text
            .contains("halite_job_duration_seconds_sum{fun=\"test.ping\",result=\"success\"} 0.5"));
        assert!(text.contains("halite_minions{name=\"up\"} 3"));
        assert!(text.contains("halite_queue_depth{name=\"deliveries\"} 2"));
        assert!(text.contains("halite_queue_depth{name=\"jobs_in_flight\"} 0"));
    }
}

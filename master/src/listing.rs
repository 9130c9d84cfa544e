//! Job listing with filters and pages (`GET /v1/jobs`,
//! `GET /v1/minions/{id}/jobs`), over the store's newest-first scans.

use crate::error::CoreError;
use halite_model::{JobFilter, JobPage, JobSummary, ReturnOutcome};
use halite_proto::time::now_ms;
use halite_proto::Jid;

use crate::core::Core;
use crate::store::{JobHead, StoredJob};

/// Default and largest page sizes.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;

/// One page of jobs matching `filter`, newest first; `next` is set when
/// more may follow.
pub fn jobs(core: &Core, filter: &JobFilter) -> Result<JobPage, CoreError> {
    let limit = filter.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let mut before = filter
        .before
        .as_deref()
        .map(Jid::parse)
        .transpose()
        .map_err(|e| CoreError::invalid(e.to_string()))?;
    if let Some(to) = filter.to {
        let bound = Jid::from_unix_us(to.saturating_mul(1000));
        if before.as_ref().is_none_or(|b| bound < *b) {
            before = Some(bound);
        }
    }
    let fun = filter
        .fun
        .as_deref()
        .map(FunFilter::new)
        .transpose()
        .map_err(|e| CoreError::invalid(format!("fun: {e}")))?;
    let mut page = Vec::with_capacity(limit);
    // Jobs that passed the filters on the job itself wait here for their
    // returns, read for many jobs at once (one round trip to a shared
    // store); at most as many as the page still lacks.
    let mut waiting: Vec<StoredJob> = Vec::new();
    let take_returns = |waiting: &mut Vec<StoredJob>, page: &mut Vec<JobSummary>| {
        let jobs = std::mem::take(waiting);
        let jids: Vec<Jid> = jobs.iter().map(|job| job.record.jid.clone()).collect();
        let outcomes = core.store.return_outcomes_of(&jids)?;
        for (stored, returns) in jobs.into_iter().zip(outcomes) {
            let summary = summarize(stored, &returns);
            if filter
                .result
                .as_deref()
                .is_none_or(|r| r == result_of(&summary))
                && filter
                    .app
                    .as_ref()
                    .is_none_or(|a| summary.app.as_ref() == Some(a))
            {
                page.push(summary);
            }
        }
        Ok::<_, CoreError>(())
    };
    let mut visit = |head: &JobHead, job: &dyn Fn() -> Result<StoredJob, CoreError>| {
        if filter.from.is_some_and(|from| head.issued_at < from) {
            return Ok::<_, CoreError>(false);
        }
        let wanted = fun.as_ref().is_none_or(|f| f.matches(&head.fun))
            && filter.target.as_ref().is_none_or(|t| *t == head.target)
            && filter.user.as_ref().is_none_or(|u| *u == head.user);
        if wanted {
            let stored = job()?;
            if let Some(reader) = &filter.reader {
                if !core.may_read(reader, &stored.record) {
                    return Ok(true);
                }
            }
            waiting.push(stored);
            if waiting.len() > limit - page.len().min(limit) {
                take_returns(&mut waiting, &mut page)?;
            }
        }
        Ok(page.len() <= limit)
    };
    match &filter.minion {
        Some(minion) => {
            let mut cursor = before.clone();
            'scan: loop {
                let jids = core.store.minion_jobs(minion, 256, cursor.as_ref())?;
                let Some(last) = jids.last().cloned() else {
                    break;
                };
                for jid in jids {
                    if let Some(stored) = core.store.job(&jid)? {
                        let head = JobHead {
                            jid: stored.record.jid.clone(),
                            fun: stored.record.fun.clone(),
                            target: stored.record.target.clone(),
                            user: stored.record.user.clone(),
                            issued_at: stored.record.issued_at,
                        };
                        if !visit(&head, &|| Ok(stored.clone()))? {
                            break 'scan;
                        }
                    }
                }
                cursor = Some(last);
            }
        }
        None => {
            let scan: Box<dyn Iterator<Item = _>> = match &fun {
                // The function index reads only the matching jobs.
                Some(fun) => Box::new(
                    core.store
                        .scan_jobs_of(|name| fun.matches(name), before.as_ref())?,
                ),
                None => Box::new(core.store.scan_jobs(before.as_ref())),
            };
            for item in scan {
                let (head, lazy) = item?;
                if !visit(&head, &|| Ok(lazy.decode()?))? {
                    break;
                }
            }
        }
    }
    take_returns(&mut waiting, &mut page)?;
    let next = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|j| j.jid.to_string())
    } else {
        None
    };
    Ok(JobPage { jobs: page, next })
}

fn summarize(job: StoredJob, returns: &[ReturnOutcome]) -> JobSummary {
    let record = job.record;
    let failed = returns.iter().filter(|r| !r.success).count();
    let returned = returns.len();
    let deadline = record.deadline();
    JobSummary {
        done: returned >= record.expected.len() || now_ms() >= deadline,
        failed,
        returned,
        expected: record.expected.len(),
        jid: record.jid,
        fun: record.fun,
        target: record.target,
        tgt_type: record.tgt_type,
        // The name as given, or the definition the master put in its place.
        app: record
            .kwarg
            .get("app")
            .and_then(|a| a.as_str().or_else(|| a.get("name")?.as_str()))
            .map(str::to_owned),
        arg: record.arg,
        user: record.user,
        issued_at: record.issued_at,
    }
}

/// `running`, `success` or `failed` (failed also when a minion never returned).
pub fn result_of(job: &JobSummary) -> &'static str {
    if job.failed > 0 || (job.done && job.returned < job.expected) {
        "failed"
    } else if job.done {
        "success"
    } else {
        "running"
    }
}

/// A `*` glob as an anchored regex (`git_deploy.*`).
fn glob_regex(glob: &str) -> Result<regex::Regex, regex::Error> {
    let pattern: Vec<String> = glob.split('*').map(regex::escape).collect();
    regex::Regex::new(&format!("^{}$", pattern.join(".*")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names() {
        let re = glob_regex("git_deploy.*").unwrap();
        assert!(re.is_match("git_deploy.deploy"));
        assert!(!re.is_match("xgit_deploy.deploy"));
        assert!(glob_regex("test.ping").unwrap().is_match("test.ping"));
        assert!(!glob_regex("test.ping").unwrap().is_match("test.pingX"));
    }
}

/// The `fun` filter of a job listing. A deploy started as `git_deploy`
/// (a module's default function) is found by `git_deploy.*`,
/// `git_deploy.deploy` and `git_deploy` alike: names are compared as typed
/// and by their full catalog name.
struct FunFilter {
    glob: regex::Regex,
    /// The filter's full name, when it names one catalog function.
    full: Option<&'static str>,
}

impl FunFilter {
    fn new(text: &str) -> Result<FunFilter, regex::Error> {
        Ok(FunFilter {
            glob: glob_regex(text)?,
            full: halite_proto::catalog::function(text).map(|f| f.fun),
        })
    }

    fn matches(&self, stored: &str) -> bool {
        if self.glob.is_match(stored) {
            return true;
        }
        let Some(stored_full) = halite_proto::catalog::function(stored).map(|f| f.fun) else {
            return false;
        };
        self.glob.is_match(stored_full) || self.full == Some(stored_full)
    }
}

#[cfg(test)]
mod fun_filter_tests {
    use super::FunFilter;

    #[test]
    fn a_deploy_is_found_by_its_module_whichever_spelling_started_it() {
        for filter in ["git_deploy.*", "git_deploy.deploy", "git_deploy", "git_*"] {
            let filter = FunFilter::new(filter).unwrap();
            assert!(filter.matches("git_deploy"));
            assert!(filter.matches("git_deploy.deploy"));
            assert!(!filter.matches("cmd.run"));
        }
        let rollback = FunFilter::new("git_deploy.rollback").unwrap();
        assert!(!rollback.matches("git_deploy"));
        assert!(rollback.matches("git_deploy.rollback"));
        assert!(FunFilter::new("my_lua.*").unwrap().matches("my_lua.go"));
    }
}

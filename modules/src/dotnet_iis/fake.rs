//! A test double of `appcmd.exe` that keeps IIS's state the way IIS does
//! (sites with bindings and state, application pools with state, runtime,
//! pipeline and identity, virtual directories with physical paths) and
//! answers in appcmd's formats and error lines. A pool can be made slow
//! to stop, or never to stop.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::future::BoxFuture;

use super::appcmd::{Appcmd, ToolOutput};

#[derive(Clone, Debug)]
pub(crate) struct Pool {
    pub(crate) state: String,
    pub(crate) runtime: String,
    pub(crate) pipeline: String,
    pub(crate) identity: String,
    /// Queries of the state before a stop completes (`u32::MAX`: never).
    pub(crate) stop_delay: u32,
    pending_stop: u32,
}

#[derive(Clone, Debug)]
pub(crate) struct Site {
    pub(crate) id: u32,
    pub(crate) state: String,
    pub(crate) bindings: Vec<String>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) sites: BTreeMap<String, Site>,
    pub(crate) pools: BTreeMap<String, Pool>,
    /// vdir identifier → physical path.
    pub(crate) vdirs: BTreeMap<String, String>,
    /// app identifier → pool.
    pub(crate) apps: BTreeMap<String, String>,
    /// Every command run, for assertions on order.
    pub(crate) log: Vec<String>,
}

#[derive(Default)]
pub(crate) struct FakeAppcmd {
    pub(crate) state: Mutex<State>,
}

fn ok(text: &str) -> ToolOutput {
    ToolOutput {
        code: 0,
        stdout: format!("{text}\r\n"),
        stderr: String::new(),
    }
}

fn error(text: &str) -> ToolOutput {
    ToolOutput {
        code: 1,
        stdout: format!("ERROR ( message:{text} )\r\n"),
        stderr: String::new(),
    }
}

impl FakeAppcmd {
    /// IIS with one site, its root application in `pool`, serving `path`.
    pub(crate) fn with_site(site: &str, pool: &str, path: &str) -> FakeAppcmd {
        let fake = FakeAppcmd::default();
        {
            let mut s = fake.state.lock().unwrap();
            s.sites.insert(
                site.into(),
                Site {
                    id: 1,
                    state: "Started".into(),
                    bindings: vec!["http/*:80:".into()],
                },
            );
            s.pools.insert(pool.into(), Pool::new("v4.0", "Integrated"));
            s.vdirs.insert(format!("{site}/"), path.into());
            s.apps.insert(format!("{site}/"), pool.into());
        }
        fake
    }

    fn answer(&self, args: &[String]) -> ToolOutput {
        let mut s = self.state.lock().unwrap();
        s.log.push(args.join(" "));
        let flag = |prefix: &str| {
            args.iter()
                .find_map(|a| a.strip_prefix(prefix))
                .map(str::to_owned)
        };
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        match words.as_slice() {
            ["list", "apppool", name, "/text:state"] => match s.pools.get_mut(*name) {
                None => error(&format!(
                    "Cannot find APPPOOL object with identifier \"{name}\"."
                )),
                Some(pool) => {
                    if pool.state == "Stopping" && pool.pending_stop != u32::MAX {
                        if pool.pending_stop == 0 {
                            pool.state = "Stopped".into();
                        } else {
                            pool.pending_stop -= 1;
                        }
                    }
                    ok(&pool.state)
                }
            },
            [verb @ ("start" | "stop" | "recycle"), "apppool", _] => {
                let name = flag("/apppool.name:").unwrap_or_default();
                let Some(pool) = s.pools.get_mut(&name) else {
                    return error(&format!(
                        "Cannot find APPPOOL object with identifier \"{name}\"."
                    ));
                };
                match (*verb, pool.state.as_str()) {
                    ("stop", "Stopped") => error("The object identifier does not represent a valid object. (already stopped)"),
                    ("stop", _) => {
                        pool.pending_stop = pool.stop_delay;
                        pool.state = if pool.stop_delay == 0 { "Stopped".into() } else { "Stopping".into() };
                        ok(&format!("\"{name}\" successfully stopped"))
                    }
                    ("start", _) => {
                        pool.state = "Started".into();
                        ok(&format!("\"{name}\" successfully started."))
                    }
                    (_, "Started") => ok(&format!("\"{name}\" successfully recycled")),
                    _ => error("Cannot recycle a stopped application pool."),
                }
            }
            ["list", "site", name, "/text:state"] => match s.sites.get(*name) {
                None => error(&format!(
                    "Cannot find SITE object with identifier \"{name}\"."
                )),
                Some(site) => ok(&site.state),
            },
            [verb @ ("start" | "stop"), "site", _] => {
                let name = flag("/site.name:").unwrap_or_default();
                match s.sites.get_mut(&name) {
                    None => error(&format!(
                        "Cannot find SITE object with identifier \"{name}\"."
                    )),
                    Some(site) => {
                        site.state = if *verb == "start" {
                            "Started".into()
                        } else {
                            "Stopped".into()
                        };
                        ok(&format!("\"{name}\" successfully {verb}ed"))
                    }
                }
            }
            ["list", "vdir", id, "/text:physicalPath"] => match s.vdirs.get(*id) {
                None => error(&format!(
                    "Cannot find VDIR object with identifier \"{id}\"."
                )),
                Some(path) => ok(path),
            },
            ["set", "vdir", id, _] => {
                let path = flag("/physicalPath:").unwrap_or_default();
                match s.vdirs.get_mut(*id) {
                    None => error(&format!(
                        "Cannot find VDIR object with identifier \"{id}\"."
                    )),
                    Some(current) => {
                        *current = path;
                        ok(&format!("VDIR object \"{id}\" changed"))
                    }
                }
            }
            ["list", "sites", "/xml"] => {
                let mut out =
                    String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n<appcmd>\r\n");
                for (name, site) in &s.sites {
                    out.push_str(&format!("    <SITE SITE.NAME=\"{name}\" SITE.ID=\"{}\" bindings=\"{}\" state=\"{}\" />\r\n", site.id, site.bindings.join(","), site.state));
                }
                out.push_str("</appcmd>");
                ok(&out)
            }
            ["list", "apppools", "/xml"] => {
                let mut out =
                    String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n<appcmd>\r\n");
                for (name, pool) in &s.pools {
                    out.push_str(&format!("    <APPPOOL APPPOOL.NAME=\"{name}\" PipelineMode=\"{}\" RuntimeVersion=\"{}\" state=\"{}\" />\r\n", pool.pipeline, pool.runtime, pool.state));
                }
                out.push_str("</appcmd>");
                ok(&out)
            }
            ["add", "site", ..] => {
                let name = flag("/name:").unwrap_or_default();
                if s.sites.contains_key(&name) {
                    return error(&format!(
                        "Failed to add duplicate collection element \"{name}\"."
                    ));
                }
                let id = s.sites.len() as u32 + 1;
                let bindings = flag("/bindings:")
                    .map(|b| b.split(',').map(str::to_owned).collect())
                    .unwrap_or_default();
                s.sites.insert(
                    name.clone(),
                    Site {
                        id,
                        state: "Started".into(),
                        bindings,
                    },
                );
                s.vdirs.insert(
                    format!("{name}/"),
                    flag("/physicalPath:").unwrap_or_default(),
                );
                s.apps.insert(format!("{name}/"), "DefaultAppPool".into());
                ok(&format!("SITE object \"{name}\" added"))
            }
            ["add", "apppool", ..] => {
                let name = flag("/name:").unwrap_or_default();
                if s.pools.contains_key(&name) {
                    return error(&format!(
                        "Failed to add duplicate collection element \"{name}\"."
                    ));
                }
                let pool = Pool::new(
                    &flag("/managedRuntimeVersion:").unwrap_or_default(),
                    &flag("/managedPipelineMode:").unwrap_or_else(|| "Integrated".into()),
                );
                s.pools.insert(name.clone(), pool);
                ok(&format!("APPPOOL object \"{name}\" added"))
            }
            ["set", "apppool", name, ..] => match s.pools.get_mut(*name) {
                None => error(&format!(
                    "Cannot find APPPOOL object with identifier \"{name}\"."
                )),
                Some(pool) => {
                    if let Some(identity) = flag("/processModel.identityType:") {
                        pool.identity = identity;
                    }
                    ok(&format!("APPPOOL object \"{name}\" changed"))
                }
            },
            ["set", "app", id, _] => {
                let pool = flag("/applicationPool:").unwrap_or_default();
                if !s.pools.contains_key(&pool) {
                    return error(&format!(
                        "Cannot find APPPOOL object with identifier \"{pool}\"."
                    ));
                }
                match s.apps.get_mut(*id) {
                    None => error(&format!("Cannot find APP object with identifier \"{id}\".")),
                    Some(current) => {
                        *current = pool;
                        ok(&format!("APP object \"{id}\" changed"))
                    }
                }
            }
            ["set", "site", _, change] => {
                let name = flag("/site.name:").unwrap_or_default();
                let Some(site) = s.sites.get_mut(&name) else {
                    return error(&format!(
                        "Cannot find SITE object with identifier \"{name}\"."
                    ));
                };
                let parse = |c: &str| -> Option<String> {
                    let protocol = c.split("protocol='").nth(1)?.split('\'').next()?;
                    let info = c.split("bindingInformation='").nth(1)?.split('\'').next()?;
                    Some(format!("{protocol}/{info}"))
                };
                let Some(binding) = parse(change) else {
                    return error("Malformed binding.");
                };
                if change.starts_with("/+") {
                    if site.bindings.contains(&binding) {
                        return error(&format!("Cannot add duplicate collection entry of type 'binding' with combined key attributes 'protocol, bindingInformation' respectively set to '{binding}'"));
                    }
                    site.bindings.push(binding);
                } else {
                    let before = site.bindings.len();
                    site.bindings.retain(|b| *b != binding);
                    if site.bindings.len() == before {
                        return error("Cannot find requested collection element.");
                    }
                }
                ok(&format!("SITE object \"{name}\" changed"))
            }
            _ => error("Unknown command or arguments."),
        }
    }
}

impl Pool {
    pub(crate) fn new(runtime: &str, pipeline: &str) -> Pool {
        Pool {
            state: "Started".into(),
            runtime: runtime.into(),
            pipeline: pipeline.into(),
            identity: "ApplicationPoolIdentity".into(),
            stop_delay: 1,
            pending_stop: 0,
        }
    }
}

impl Appcmd for FakeAppcmd {
    fn run(&self, args: Vec<String>) -> BoxFuture<'_, Result<ToolOutput, String>> {
        let out = self.answer(&args);
        Box::pin(async move { Ok(out) })
    }
}

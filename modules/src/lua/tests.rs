//! The sandbox (every forbidden escape tried), the limits, the host API,
//! and errors with their line numbers.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::call::tests::call;

fn config(roots: Vec<PathBuf>) -> Arc<LuaConfig> {
    Arc::new(LuaConfig {
        limits: Limits {
            instructions: 50_000_000,
            memory: 16 * 1024 * 1024,
            timeout: Duration::from_secs(20),
        },
        roots,
        module_roots: HashMap::new(),
    })
}

fn module(source: &str, roots: Vec<PathBuf>) -> (Arc<Registry>, LuaModule) {
    let registry = Arc::new(Registry::with_builtins());
    let module = LuaModule::new("probe", source, config(roots), Arc::downgrade(&registry))
        .expect("module loads");
    (registry, module)
}

async fn run(module: &LuaModule, function: &str, kwargs: Value) -> Outcome {
    module
        .call(
            function,
            call(&format!("probe.{function}"), vec![json!("a1")], kwargs),
        )
        .await
}

/// Runs `body` as the function `f` of a module; answers the outcome.
async fn run_body(body: &str) -> Outcome {
    let source = format!("local M = {{}}\nfunction M.f(job)\n{body}\nend\nreturn M\n");
    let (_registry, module) = module(&source, Vec::new());
    run(&module, "f", json!({})).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_gets_the_job_and_returns_data() {
    let (_r, m) = module(
        "local M = {}\nfunction M.greet(job)\n  return { hello = job.kwargs.name, first = job.args[1], jid = job.jid, fun = job.fun }\nend\nreturn M\n",
        Vec::new(),
    );
    assert_eq!(m.functions(), &["greet"]);
    let out = run(&m, "greet", json!({ "name": "web" })).await;
    assert!(out.success, "{out:?}");
    assert_eq!(out.data["hello"], "web");
    assert_eq!(out.data["first"], "a1");
    assert_eq!(out.data["fun"], "probe.greet");
    assert_eq!(out.data["jid"], "20260101000000000001");
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_carry_the_message_and_line() {
    let out = run_body("local x = 1\nerror('boom: disk full')").await;
    assert!(!out.success);
    assert_eq!(out.data, json!("probe.lua:4: boom: disk full"));
    let out = run_body("local t = nil\nreturn t.field").await;
    assert!(
        out.data.as_str().unwrap().starts_with("probe.lua:4:"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_escape_is_closed() {
    for (body, needle) in [
        ("return io.open('/etc/passwd')", "io"),
        ("return os.execute('id')", "execute"),
        ("return os.getenv('HOME')", "getenv"),
        ("return os.remove('/tmp/x')", "remove"),
        ("return os.exit(1)", "exit"),
        ("return require('os')", "require"),
        ("return dofile('/etc/passwd')", "dofile"),
        ("return loadfile('/etc/passwd')", "loadfile"),
        ("return debug.getinfo(1)", "debug"),
        ("return package.loadlib('libc.so.6', 'system')", "package"),
        ("return string.dump(function() end)", "dump"),
        ("return collectgarbage('count')", "collectgarbage"),
        ("return load('\\27Lua')()", "binary chunks"),
    ] {
        let out = run_body(body).await;
        assert!(!out.success, "{body} should fail: {out:?}");
        let text = out.data.as_str().unwrap_or_default().to_owned();
        assert!(
            text.contains(needle) || text.contains("nil value"),
            "{body}: {text}"
        );
    }
    // Text chunks still load, inside the sandbox.
    let out = run_body("return load('return 1 + 2')()").await;
    assert_eq!(out.data, json!(3));
    let out = run_body("return load('return io')()").await;
    assert_eq!(out.data, Value::Null);
    // The clock is there.
    let out = run_body("return os.time() > 0").await;
    assert_eq!(out.data, json!(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_stop_runaway_scripts() {
    let out = run_body("while true do end").await;
    assert!(!out.success);
    assert!(
        out.data.as_str().unwrap().contains("instruction budget"),
        "{out:?}"
    );
    // Also inside a coroutine.
    let out = run_body("local co = coroutine.create(function() while true do end end)\nlocal ok, err = coroutine.resume(co)\nreturn tostring(err)").await;
    let text = serde_json::to_string(&out.data).unwrap();
    assert!(text.contains("instruction budget"), "{text}");
    // Catching the budget error does not buy more instructions.
    let out =
        run_body("for i = 1, 100 do pcall(function() while true do end end) end\nreturn 'escaped'")
            .await;
    assert!(!out.success, "{out:?}");
    let out =
        run_body("local t = {}\nfor i = 1, 1e9 do t[i] = string.rep('x', 1000) .. i end").await;
    assert!(!out.success);
    assert!(
        out.data.as_str().unwrap().contains("memory limit"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deadline_and_cancellation_stop_host_waits_and_loops() {
    let source = "local M = {}\nfunction M.nap() halite.sleep(30) end\nfunction M.spin() while true do end end\nreturn M\n";
    let registry = Arc::new(Registry::with_builtins());
    let mut cfg = (*config(Vec::new())).clone();
    cfg.limits.timeout = Duration::from_millis(300);
    cfg.limits.instructions = u64::MAX;
    let m = LuaModule::new("probe", source, Arc::new(cfg), Arc::downgrade(&registry)).unwrap();
    let started = std::time::Instant::now();
    let out = run(&m, "nap", json!({})).await;
    assert_eq!(out.retcode, RETCODE_TIMEOUT, "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let out = run(&m, "spin", json!({})).await;
    assert!(out.data.as_str().unwrap().contains("time limit"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn files_only_under_the_roots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("srv");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(dir.path().join("secret"), "no").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir.path().join("secret"), root.join("link")).unwrap();
    let r = root.display().to_string();
    let source = format!(
        r#"local M = {{}}
function M.ok()
  halite.write("{r}/conf/app.conf", "port={{{{ port }}}}")
  halite.template("{r}/conf/app.conf", "{r}/conf/out.conf", {{ port = 8080 }})
  local names = halite.list("{r}/conf")
  local text = halite.read("{r}/conf/out.conf")
  halite.remove("{r}/conf", {{ recursive = true }})
  return {{ names = names, text = text, gone = not halite.exists("{r}/conf") }}
end
function M.read(job) return halite.read(job.kwargs.path) end
function M.write(job) return halite.write(job.kwargs.path, "x") end
return M
"#
    );
    let (_r, m) = module(&source, vec![root.clone()]);
    let out = run(&m, "ok", json!({})).await;
    assert!(out.success, "{out:?}");
    assert_eq!(out.data["names"], json!(["app.conf", "out.conf"]));
    assert_eq!(out.data["text"], "port=8080");
    assert_eq!(out.data["gone"], true);
    for path in [
        dir.path().join("secret").display().to_string(),
        format!("{r}/../secret"),
        format!("{r}/link"),
        "relative/path".to_owned(),
        "/etc/passwd".to_owned(),
    ] {
        let out = run(&m, "read", json!({ "path": path })).await;
        assert!(!out.success, "{path}: {out:?}");
        assert!(
            out.data.as_str().unwrap().contains("allowed")
                || out.data.as_str().unwrap().contains("absolute")
                || out.data.as_str().unwrap().contains(".."),
            "{path}: {out:?}"
        );
        let out = run(&m, "write", json!({ "path": path })).await;
        assert!(!out.success, "{path}: {out:?}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("secret")).unwrap(),
        "no"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_progress_stages_and_module_calls() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let source = r#"local M = {}
function M.go()
  halite.stage("warm", "started")
  local r = halite.run({ argv = { "sh", "-c", "echo out; echo err >&2; exit 3" } })
  local s = halite.run({ cmd = "echo $GREETING", env = { GREETING = "hi" } })
  halite.progress("step two")
  local ping = halite.call("test.echo", { text = "pong" })
  local bad = halite.call("test.fail", { message = "nope" })
  halite.stage("warm", "succeeded", "done")
  return { r = r.retcode, out = r.stdout, err = r.stderr, s = s.stdout, ping = ping.data, bad = bad.success }
end
return M
"#;
    let (_r, m) = module(source, Vec::new());
    let mut c = call("probe.go", vec![], json!({}));
    c.events = crate::EventSink::new(tx);
    let out = m.call("go", c).await;
    assert!(out.success, "{out:?}");
    assert_eq!(
        out.data,
        json!({ "r": 3, "out": "out", "err": "err", "s": "hi", "ping": "pong", "bad": false })
    );
    let mut seen = Vec::new();
    while let Ok(event) = rx.try_recv() {
        seen.push(serde_json::to_value(event).unwrap());
    }
    let text = serde_json::to_string(&seen).unwrap();
    assert!(
        text.contains("\"warm\"") && text.contains("step two") && text.contains("\"out\""),
        "{text}"
    );
}

#[test]
fn bad_modules_are_refused_with_the_reason() {
    let registry = Arc::new(Registry::new());
    for (source, needle) in [
        ("return 42", "must return a table"),
        ("return {}", "without functions"),
        ("local M = {\nreturn M", "probe.lua:2"),
        ("while true do end", "instruction budget"),
    ] {
        let err = LuaModule::new(
            "probe",
            source,
            config(Vec::new()),
            Arc::downgrade(&registry),
        )
        .unwrap_err();
        assert!(err.contains(needle), "{source}: {err}");
    }
    for name in ["Probe", "1x", "a-b", ""] {
        assert!(LuaModule::new(
            name,
            "return {f=function() end}",
            config(Vec::new()),
            Arc::downgrade(&registry)
        )
        .is_err());
    }
}

#[test]
fn a_module_log_message_is_one_line_of_the_minion_log() {
    let line = super::host::log_line("ok\n2026-11-30 INFO forged: root login\r\x1b[2J");
    assert!(!line.contains('\n') && !line.contains('\r') && !line.contains('\x1b'));
    assert!(line.starts_with("ok\\n2026"), "{line}");
    let long = super::host::log_line(&"x".repeat(10_000));
    assert!(long.chars().count() <= 4097);
}

#[tokio::test(flavor = "multi_thread")]
async fn pattern_functions_behave_as_lua_s() {
    let out = run_body(
        r#"
  local r = {}
  r[1] = {string.find("hello world", "o w")}
  r[2] = {string.find("hello world", "l+")}
  r[3] = {string.match("key = value", "(%w+)%s*=%s*(%w+)")}
  r[4] = {string.find("a.b", ".", 1, true)}
  r[5] = {("THE (quick) fox"):find("%((%a+)%)")}
  r[6] = {string.gsub("hello world", "o", "0")}
  r[7] = {string.gsub("abc", "%w", "%0%0")}
  r[8] = {string.gsub("$name is $age", "%$(%w+)", {name = "Ann", age = 3})}
  r[9] = {string.gsub("abc", "", "-")}
  local words = {}
  for w in string.gmatch("one two  three", "%a+") do words[#words + 1] = w end
  r[10] = words
  r[11] = {string.match("  trim me  ", "^%s*(.-)%s*$")}
  r[12] = {string.find("THE (quick) fox", "%f[%a]%a+", 5)}
  r[13] = {string.match("x[[y]]z", "%b[]")}
  r[14] = {string.match("hello", "()ll()")}
  r[15] = {string.gsub("hello world", "(%w+)", function(w) return w:upper() end)}
  r[16] = {string.match("2026-11-30", "(%d+)-(%d+)-(%d+)")}
  r[17] = {(pcall(string.find, "x", "[a"))}
  r[18] = {string.find("abc", "^b")}
  r[19] = {string.gsub("abc", "b", "%%")}
  r[20] = {string.match("aaa", "(a)%1")}
  r[21] = {string.find("hello", "l", -2)}
  r[22] = {string.gsub("one two", "(%w+) (%w+)", "%2 %1", 1)}
  r[24] = {string.find("aa", "()%1")}
  local pairs_ = {}
  for k, v in string.gmatch("a=1, b=2", "(%w+)=(%w+)") do pairs_[#pairs_ + 1] = k .. v end
  r[23] = pairs_
  return r
"#,
    )
    .await;
    assert!(out.success, "{out:?}");
    let r = &out.data;
    assert_eq!(r[0], json!([5, 7]));
    assert_eq!(r[1], json!([3, 4]));
    assert_eq!(r[2], json!(["key", "value"]));
    assert_eq!(r[3], json!([2, 2]));
    assert_eq!(r[4], json!([5, 11, "quick"]));
    assert_eq!(r[5], json!(["hell0 w0rld", 2]));
    assert_eq!(r[6], json!(["aabbcc", 3]));
    assert_eq!(r[7], json!(["Ann is 3", 2]));
    assert_eq!(r[8], json!(["-a-b-c-", 4]));
    assert_eq!(r[9], json!(["one", "two", "three"]));
    assert_eq!(r[10], json!(["trim me"]));
    assert_eq!(r[11], json!([6, 10]));
    assert_eq!(r[12], json!(["[[y]]"]));
    assert_eq!(r[13], json!([3, 5]));
    assert_eq!(r[14], json!(["HELLO WORLD", 2]));
    assert_eq!(r[15], json!(["2026", "11", "30"]));
    assert_eq!(r[16][0], json!(false), "a malformed pattern is an error");
    assert!(r[17].as_array().is_none_or(|a| a.is_empty()), "{}", r[17]);
    assert_eq!(r[18], json!(["a%c", 1]));
    assert_eq!(r[19], json!(["a"]));
    assert_eq!(r[20], json!([4, 4]));
    assert_eq!(r[21], json!(["two one", 1]));
    assert_eq!(r[22], json!(["a1", "b2"]));
    assert!(r[23].as_array().is_none_or(|a| a.is_empty()), "{}", r[23]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backtracking_pattern_stops_at_the_jobs_deadline() {
    let config = Arc::new(LuaConfig {
        limits: Limits {
            instructions: 50_000_000,
            memory: 16 * 1024 * 1024,
            timeout: Duration::from_secs(1),
        },
        roots: Vec::new(),
        module_roots: HashMap::new(),
    });
    let registry = Arc::new(Registry::with_builtins());
    let source = "local M = {}\nfunction M.f(job)\n  return string.find(string.rep('a', 50000), '.-.-.-.-b')\nend\nreturn M\n";
    let module =
        LuaModule::new("probe", source, config, Arc::downgrade(&registry)).expect("module loads");
    let out = run(&module, "f", json!({})).await;
    assert!(!out.success, "{out:?}");
    assert!(
        out.data.as_str().unwrap_or_default().contains("time limit"),
        "{out:?}"
    );
}

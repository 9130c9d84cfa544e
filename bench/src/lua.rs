//! `lua`: what running a function as a Lua module costs on top of the same
//! function in Rust. Both go through the minion's `Registry::run` in this
//! process; the Lua module returns the same small table `test.echo`
//! returns here (`{ok = true, n = N}`), so the difference is the Lua
//! state, the sandbox, loading the module and converting values.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use halite_modules::lua::{LuaConfig, LuaModule};
use halite_modules::{Call, EventSink, Registry};
use serde_json::json;

use crate::report::{percentile, Table};

/// Options of `halite-bench lua`.
#[derive(Args, Debug)]
pub struct LuaArgs {
    /// Measured calls of each.
    #[arg(long, default_value_t = 5000)]
    calls: usize,
    /// Print Markdown tables (for bench/RESULTS.md).
    #[arg(long)]
    markdown: bool,
}

const MODULE: &str = r#"local M = {}
function M.echo(job)
  return { ok = true, n = job.kwargs.n }
end
return M
"#;

fn call(fun: &str, n: usize) -> Call {
    let kwargs = match json!({ "text": { "ok": true, "n": n }, "n": n }) {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    Call {
        jid: halite_proto::Jid::parse("20260101000000000001").expect("jid"),
        fun: fun.into(),
        args: Vec::new(),
        kwargs,
        grains: Arc::new(json!({ "os": "Linux" })),
        cancel: tokio_util::sync::CancellationToken::new(),
        events: EventSink::discard(),
        published: Default::default(),
    }
}

async fn time(registry: &Registry, fun: &str, calls: usize) -> Result<Vec<f64>> {
    let mut micros = Vec::with_capacity(calls);
    for n in 0..calls {
        let mut c = call(fun, n);
        if fun == "test.echo" {
            // test.echo takes one argument: the value to return.
            c.kwargs.remove("n");
        } else {
            c.kwargs.remove("text");
        }
        let started = Instant::now();
        let outcome = registry.run(c).await;
        micros.push(started.elapsed().as_secs_f64() * 1e6);
        if !outcome.success || outcome.data["n"] != n {
            bail!("{fun} returned {:?}", outcome.data);
        }
    }
    Ok(micros)
}

/// Runs the benchmark.
pub fn run(args: LuaArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("runtime")?;
    let registry = Arc::new(Registry::with_builtins());
    let module = LuaModule::new(
        "bench_lua",
        MODULE,
        Arc::new(LuaConfig::default()),
        Arc::downgrade(&registry),
    )
    .map_err(anyhow::Error::msg)?;
    registry.register(Arc::new(module));
    let (rust, lua) = runtime.block_on(async {
        // Warm both paths (thread pool, allocator) before measuring.
        time(&registry, "test.echo", 200).await?;
        time(&registry, "bench_lua.echo", 200).await?;
        let rust = time(&registry, "test.echo", args.calls).await?;
        let lua = time(&registry, "bench_lua.echo", args.calls).await?;
        Ok::<_, anyhow::Error>((rust, lua))
    })?;
    let mut table = Table::new(&["call", "calls", "mean µs", "p50 µs", "p99 µs"]);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    for (name, values) in [("test.echo (Rust)", &rust), ("bench_lua.echo (Lua)", &lua)] {
        table.row(vec![
            name.to_owned(),
            values.len().to_string(),
            format!("{:.1}", mean(values)),
            format!("{:.1}", percentile(values, 50.0)),
            format!("{:.1}", percentile(values, 99.0)),
        ]);
    }
    println!("{}", table.render(args.markdown));
    let extra =
        Duration::from_secs_f64((percentile(&lua, 50.0) - percentile(&rust, 50.0)).max(0.0) / 1e6);
    println!(
        "Lua overhead per call: p50 {:.3} ms (goal: under 1 ms)",
        extra.as_secs_f64() * 1000.0
    );
    Ok(())
}

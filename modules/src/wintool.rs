//! The Windows tools the Windows modules drive (`schtasks.exe`,
//! `appcmd.exe`), behind one small trait: the modules decide what to run
//! and read what comes back in platform-neutral code; only starting the
//! process is `cfg(windows)`. Tests use doubles that keep state the way
//! the tools do.

use futures::future::BoxFuture;

/// What one run of a tool printed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ToolOutput {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs a tool with arguments.
pub(crate) trait Tool: Send + Sync {
    fn run(&self, args: Vec<String>) -> BoxFuture<'_, Result<ToolOutput, String>>;
}

/// A tool of this machine.
pub(crate) struct SystemTool {
    /// The program (a path with `%windir%` expanded on Windows).
    pub(crate) program: &'static str,
    /// The module using it, for the message elsewhere.
    pub(crate) module: &'static str,
}

impl Tool for SystemTool {
    fn run(&self, args: Vec<String>) -> BoxFuture<'_, Result<ToolOutput, String>> {
        Box::pin(run_system(self.program, self.module, args))
    }
}

#[cfg(windows)]
async fn run_system(program: &str, _module: &str, args: Vec<String>) -> Result<ToolOutput, String> {
    let windir = std::env::var("windir").unwrap_or_else(|_| "C:\\Windows".into());
    let program = program.replace("%windir%", &windir);
    let out = tokio::process::Command::new(&program)
        .args(&args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    Ok(ToolOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

#[cfg(not(windows))]
async fn run_system(program: &str, module: &str, _args: Vec<String>) -> Result<ToolOutput, String> {
    Err(format!(
        "{module} needs a Windows minion: {program} does not exist on {}",
        std::env::consts::OS
    ))
}

#[cfg(all(test, not(windows)))]
mod tests {
    use serde_json::json;

    use crate::call::tests::call;
    use crate::Module;

    #[tokio::test]
    async fn off_windows_every_windows_module_says_it_needs_windows() {
        let modules: [(Box<dyn Module>, &str, serde_json::Value); 2] = [
            (
                Box::new(crate::dotnet_iis::DotnetIisModule::system()),
                "list_sites",
                json!({}),
            ),
            (
                Box::new(crate::win_task::WinTaskModule::system()),
                "info",
                json!({ "name": "x" }),
            ),
        ];
        for (module, fun, kwargs) in modules {
            let name = format!("{}.{fun}", module.name());
            let out = module.call(fun, call(&name, vec![], kwargs)).await;
            assert!(!out.success, "{name}: {out:?}");
            let message = out.data.as_str().unwrap_or_default();
            assert!(
                message.contains("needs a Windows minion"),
                "{name}: {out:?}"
            );
        }
    }
}

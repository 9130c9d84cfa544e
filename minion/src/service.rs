//! The minion as a Windows service: `halite-minion service install`
//! registers it (started at boot, with the config and `--master` it was
//! installed with), `uninstall` stops and removes it, and `service run` is
//! what the service manager starts. Logs go to
//! `%ProgramData%\halite\logs\minion.log`; a service stop ends jobs'
//! connections cleanly like SIGTERM does on Linux.

use std::ffi::OsString;
use std::sync::OnceLock;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use windows_service::service::{
    ServiceAccess, ServiceControl, ServiceControlAccept, ServiceErrorControl, ServiceExitCode,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

use crate::launch::Launch;

/// The service's name (`sc query halite-minion`).
pub const SERVICE_NAME: &str = "halite-minion";

/// Why a service command failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The service manager refused.
    #[error("service manager: {0}")]
    Manager(#[from] windows_service::Error),
    /// The executable's own path is unknown.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The launch the service manager's callback runs (it takes no context).
static LAUNCH: OnceLock<Launch> = OnceLock::new();

/// Registers the service to start at boot with `launch`'s config and
/// master, and starts it.
pub fn install(launch: &Launch) -> Result<(), ServiceError> {
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )?;
    let mut arguments = vec![
        OsString::from("--config"),
        launch.config.clone().into_os_string(),
    ];
    if let Some(master) = launch.master.as_deref().filter(|m| !m.is_empty()) {
        arguments.push("--master".into());
        arguments.push(master.into());
    }
    arguments.push("service".into());
    arguments.push("run".into());
    let info = ServiceInfo {
        name: SERVICE_NAME.into(),
        display_name: "halite minion".into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: std::env::current_exe()?,
        launch_arguments: arguments,
        dependencies: Vec::new(),
        account_name: None,
        account_password: None,
    };
    let service =
        manager.create_service(&info, ServiceAccess::CHANGE_CONFIG | ServiceAccess::START)?;
    service.set_description("Runs signed jobs from halite masters on this server")?;
    service.start::<&str>(&[])?;
    Ok(())
}

/// Stops the service if it runs, and removes it. Keys and state under
/// `%ProgramData%\halite` stay.
pub fn uninstall() -> Result<(), ServiceError> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)?;
    let service = manager.open_service(
        SERVICE_NAME,
        ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
    )?;
    if service.query_status()?.current_state != ServiceState::Stopped {
        // Already stopping, or stopped meanwhile: deleting still works.
        let _ = service.stop();
    }
    service.delete()?;
    Ok(())
}

define_windows_service!(ffi_service_main, service_main);

/// Hands the process to the service manager, which calls back into
/// [`service_main`]; returns when the service has stopped.
pub fn run(launch: Launch) -> Result<(), ServiceError> {
    let _ = LAUNCH.set(launch);
    service_dispatcher::start(SERVICE_NAME, ffi_service_main)?;
    Ok(())
}

fn service_main(_arguments: Vec<OsString>) {
    let Some(launch) = LAUNCH.get() else {
        return;
    };
    let stop = CancellationToken::new();
    let on_stop = stop.clone();
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            on_stop.cancel();
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let Ok(status) = service_control_handler::register(SERVICE_NAME, handler) else {
        return;
    };
    let report = |state, accepted, code: u8| {
        let _ = status.set_service_status(ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: accepted,
            exit_code: ServiceExitCode::Win32(u32::from(code)),
            checkpoint: 0,
            wait_hint: Duration::from_secs(10),
            process_id: None,
        });
    };
    report(
        ServiceState::Running,
        ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
        0,
    );
    let code = crate::launch::run(launch, stop, false);
    report(ServiceState::Stopped, ServiceControlAccept::empty(), code);
}

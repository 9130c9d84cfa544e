//! `appcmd.exe` (`%windir%\system32\inetsrv\appcmd.exe`): the argument
//! lists halite runs against IIS, and the parsing of its answers —
//! `/text:ATTRIBUTE` (one value per line), `/xml` (one element per object
//! with its attributes), and `ERROR ( message:... )` lines, as IIS's
//! appcmd documentation shows them.

use std::collections::BTreeMap;

pub(crate) use crate::wintool::{Tool as Appcmd, ToolOutput};

/// The `appcmd.exe` of this machine.
pub(crate) fn system() -> crate::wintool::SystemTool {
    crate::wintool::SystemTool {
        program: "%windir%\\system32\\inetsrv\\appcmd.exe",
        module: "dotnet_iis",
    }
}

fn argv(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The identifier of an application's root virtual directory:
/// `Site/` for `/`, `Site/api/` for `/api`.
pub(crate) fn vdir_id(site: &str, application: &str) -> String {
    let app = application.trim_matches('/');
    if app.is_empty() {
        format!("{site}/")
    } else {
        format!("{site}/{app}/")
    }
}

/// The application's identifier: `Site/` or `Site/api`.
pub(crate) fn app_id(site: &str, application: &str) -> String {
    let app = application.trim_matches('/');
    if app.is_empty() {
        format!("{site}/")
    } else {
        format!("{site}/{app}")
    }
}

pub(crate) fn pool_state(pool: &str) -> Vec<String> {
    argv(&["list", "apppool", pool, "/text:state"])
}
pub(crate) fn pool_command(verb: &str, pool: &str) -> Vec<String> {
    argv(&[verb, "apppool", &format!("/apppool.name:{pool}")])
}
pub(crate) fn site_state(site: &str) -> Vec<String> {
    argv(&["list", "site", site, "/text:state"])
}
pub(crate) fn site_command(verb: &str, site: &str) -> Vec<String> {
    argv(&[verb, "site", &format!("/site.name:{site}")])
}
pub(crate) fn physical_path(vdir: &str) -> Vec<String> {
    argv(&["list", "vdir", vdir, "/text:physicalPath"])
}
pub(crate) fn set_physical_path(vdir: &str, path: &str) -> Vec<String> {
    argv(&["set", "vdir", vdir, &format!("/physicalPath:{path}")])
}
pub(crate) fn list_xml(what: &str) -> Vec<String> {
    argv(&["list", what, "/xml"])
}
pub(crate) fn add_site(name: &str, bindings: &str, path: &str) -> Vec<String> {
    argv(&[
        "add",
        "site",
        &format!("/name:{name}"),
        &format!("/bindings:{bindings}"),
        &format!("/physicalPath:{path}"),
    ])
}
pub(crate) fn add_pool(name: &str, runtime: &str, pipeline: &str) -> Vec<String> {
    argv(&[
        "add",
        "apppool",
        &format!("/name:{name}"),
        &format!("/managedRuntimeVersion:{runtime}"),
        &format!("/managedPipelineMode:{pipeline}"),
    ])
}
pub(crate) fn pool_identity(name: &str, identity: &str, user: Option<(&str, &str)>) -> Vec<String> {
    let mut args = argv(&[
        "set",
        "apppool",
        name,
        &format!("/processModel.identityType:{identity}"),
    ]);
    if let Some((user, password)) = user {
        args.push(format!("/processModel.userName:{user}"));
        args.push(format!("/processModel.password:{password}"));
    }
    args
}
pub(crate) fn app_pool_of(app: &str, pool: &str) -> Vec<String> {
    argv(&["set", "app", app, &format!("/applicationPool:{pool}")])
}
pub(crate) fn binding(site: &str, add: bool, protocol: &str, information: &str) -> Vec<String> {
    let sign = if add { '+' } else { '-' };
    argv(&[
        "set",
        "site",
        &format!("/site.name:{site}"),
        &format!("/{sign}bindings.[protocol='{protocol}',bindingInformation='{information}']"),
    ])
}

/// The error appcmd printed (`ERROR ( message:Cannot find ... )`), if it did.
pub(crate) fn error_of(out: &ToolOutput) -> Option<String> {
    if out.code == 0 {
        return None;
    }
    let text = if out.stdout.contains("ERROR") {
        &out.stdout
    } else {
        &out.stderr
    };
    let message = text
        .split("message:")
        .nth(1)
        .map(|m| m.trim().trim_end_matches(')').trim().to_owned())
        .unwrap_or_else(|| text.trim().to_owned());
    Some(if message.is_empty() {
        format!("appcmd exited {}", out.code)
    } else {
        message
    })
}

/// The objects of a `/xml` listing: for each element, its attributes.
pub(crate) fn parse_xml(text: &str, element: &str) -> Vec<BTreeMap<String, String>> {
    let open = format!("<{element} ");
    let mut out = Vec::new();
    for piece in text.split(&open).skip(1) {
        let body = piece.split("/>").next().unwrap_or_default();
        let body = body.split('>').next().unwrap_or_default();
        let mut attrs = BTreeMap::new();
        let mut rest = body;
        while let Some(eq) = rest.find("=\"") {
            let name = rest[..eq].trim().to_owned();
            let after = &rest[eq + 2..];
            let Some(end) = after.find('"') else { break };
            let value = after[..end]
                .replace("&quot;", "\"")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&");
            attrs.insert(name, value);
            rest = &after[end + 1..];
        }
        out.push(attrs);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_arguments() {
        assert_eq!(vdir_id("Default Web Site", "/"), "Default Web Site/");
        assert_eq!(vdir_id("Shop", "/api/"), "Shop/api/");
        assert_eq!(app_id("Shop", "/api"), "Shop/api");
        assert_eq!(
            pool_command("stop", "ShopPool"),
            ["stop", "apppool", "/apppool.name:ShopPool"]
        );
        assert_eq!(
            set_physical_path("Shop/", "C:\\sites\\shop\\releases\\v2"),
            [
                "set",
                "vdir",
                "Shop/",
                "/physicalPath:C:\\sites\\shop\\releases\\v2"
            ]
        );
        assert_eq!(
            binding("Shop", true, "http", "*:8080:shop.local"),
            [
                "set",
                "site",
                "/site.name:Shop",
                "/+bindings.[protocol='http',bindingInformation='*:8080:shop.local']"
            ]
        );
    }

    #[test]
    fn xml_listings_and_errors() {
        // As `appcmd list sites /xml` prints it.
        let sites = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n<appcmd>\r\n    <SITE SITE.NAME=\"Default Web Site\" SITE.ID=\"1\" bindings=\"http/*:80:,https/*:443:\" state=\"Started\" />\r\n    <SITE SITE.NAME=\"Shop &amp; Co\" SITE.ID=\"2\" bindings=\"http/*:8080:\" state=\"Stopped\" />\r\n</appcmd>\r\n";
        let parsed = parse_xml(sites, "SITE");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0]["SITE.NAME"], "Default Web Site");
        assert_eq!(parsed[0]["bindings"], "http/*:80:,https/*:443:");
        assert_eq!(parsed[1]["SITE.NAME"], "Shop & Co");
        assert_eq!(parsed[1]["state"], "Stopped");
        let missing = ToolOutput {
            code: 1,
            stdout: "ERROR ( message:Cannot find APPPOOL object with identifier \"Nope\". )\r\n"
                .into(),
            stderr: String::new(),
        };
        assert_eq!(
            error_of(&missing).unwrap(),
            "Cannot find APPPOOL object with identifier \"Nope\"."
        );
        assert_eq!(error_of(&ToolOutput::default()), None);
    }
}

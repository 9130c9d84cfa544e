//! A real Tomcat 10 for java_tomcat's tests: its own `CATALINA_BASE` in a
//! temp dir (Debian's `tomcat10` package as `CATALINA_HOME`, the manager
//! from `tomcat10-admin`), a free port on 127.0.0.1, no shutdown port, a
//! `manager-script` user; killed by PID when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where Debian's packages put Tomcat.
const HOME: &str = "/usr/share/tomcat10";
const MANAGER: &str = "/usr/share/tomcat10-admin/manager";

/// A running Tomcat.
pub struct Tomcat {
    child: Child,
    /// HTTP port on 127.0.0.1.
    pub port: u16,
    /// Its CATALINA_BASE.
    pub base: PathBuf,
}

impl Drop for Tomcat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tomcat {
    /// Starts one with manager user `user`/`password`; waits until the
    /// manager answers.
    pub fn start(dir: &Path, user: &str, password: &str) -> Tomcat {
        assert!(
            Path::new(HOME).join("bin/catalina.sh").exists() && Path::new(MANAGER).exists(),
            "Tomcat is not installed: apt-get install tomcat10 tomcat10-admin (.ci/run does)"
        );
        let base = dir.join("catalina-base");
        for sub in ["conf/Catalina/localhost", "logs", "temp", "webapps", "work"] {
            std::fs::create_dir_all(base.join(sub)).expect("catalina base");
        }
        for file in [
            "web.xml",
            "context.xml",
            "logging.properties",
            "catalina.properties",
        ] {
            std::fs::copy(
                Path::new("/etc/tomcat10").join(file),
                base.join("conf").join(file),
            )
            .expect("copy Tomcat's default configuration");
        }
        let port = crate::free_port();
        std::fs::write(
            base.join("conf/server.xml"),
            format!(
                r#"<?xml version="1.0" encoding="UTF-8"?>
<Server port="-1" shutdown="SHUTDOWN">
  <GlobalNamingResources>
    <Resource name="UserDatabase" auth="Container" type="org.apache.catalina.UserDatabase"
              factory="org.apache.catalina.users.MemoryUserDatabaseFactory" pathname="conf/tomcat-users.xml"/>
  </GlobalNamingResources>
  <Service name="Catalina">
    <Connector port="{port}" address="127.0.0.1" protocol="HTTP/1.1" connectionTimeout="20000"/>
    <Engine name="Catalina" defaultHost="localhost">
      <Realm className="org.apache.catalina.realm.UserDatabaseRealm" resourceName="UserDatabase"/>
      <Host name="localhost" appBase="webapps" unpackWARs="true" autoDeploy="true"/>
    </Engine>
  </Service>
</Server>
"#
            ),
        )
        .expect("server.xml");
        std::fs::write(
            base.join("conf/tomcat-users.xml"),
            format!(
                r#"<?xml version="1.0" encoding="UTF-8"?>
<tomcat-users xmlns="http://tomcat.apache.org/xml" version="1.0">
  <role rolename="manager-script"/>
  <user username="{user}" password="{password}" roles="manager-script"/>
</tomcat-users>
"#
            ),
        )
        .expect("tomcat-users.xml");
        std::fs::write(
            base.join("conf/Catalina/localhost/manager.xml"),
            format!(
                r#"<Context docBase="{MANAGER}" antiResourceLocking="false" privileged="true"/>"#
            ),
        )
        .expect("manager.xml");
        let log = std::fs::File::create(base.join("logs/catalina.out")).expect("log");
        // `catalina.sh run` execs java, so the PID is the JVM's.
        let child = Command::new(Path::new(HOME).join("bin/catalina.sh"))
            .arg("run")
            .env("CATALINA_HOME", HOME)
            .env("CATALINA_BASE", &base)
            .env("CATALINA_PID", base.join("tomcat.pid"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start Tomcat");
        let tomcat = Tomcat { child, port, base };
        crate::eventually(Duration::from_secs(120), "Tomcat's manager answers", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && Command::new("curl")
                    .args([
                        "-sf",
                        "-u",
                        &format!("{user}:{password}"),
                        &format!("http://127.0.0.1:{port}/manager/text/list"),
                    ])
                    .output()
                    .is_ok_and(|o| o.status.success())
        });
        tomcat
    }

    /// GET `path` on this Tomcat: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args([
                "-s",
                "-w",
                "\n%{http_code}",
                &format!("http://127.0.0.1:{}{path}", self.port),
            ])
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }
}

/// Builds `<dir>/<name>.war` with `files` (path, content) and a minimal
/// `WEB-INF/web.xml`, with the JDK's `jar`; answers the path.
pub fn war(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let tree = dir.join(format!("{name}-tree"));
    std::fs::create_dir_all(tree.join("WEB-INF")).expect("war tree");
    std::fs::write(
        tree.join("WEB-INF/web.xml"),
        r#"<web-app xmlns="https://jakarta.ee/xml/ns/jakartaee" version="5.0"/>"#,
    )
    .expect("web.xml");
    for (path, content) in files {
        std::fs::write(tree.join(path), content).expect("war file");
    }
    let war = dir.join(format!("{name}.war"));
    let out = Command::new("jar")
        .arg("cf")
        .arg(&war)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .output()
        .expect("jar runs (a JDK is needed)");
    assert!(
        out.status.success(),
        "jar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    war
}

//! Real git servers for the deploy tests: a source repository built with
//! the system `git`, published as a bare repository, served by `git
//! daemon` (git://) or by `git http-backend` behind a small HTTPS server
//! with basic auth (`tests/support/git_http_server.py`), with a test CA
//! made by `openssl`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Runs `git args` in `dir` with a fixed identity and no user config.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "halite-test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "halite-test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git runs (install git)");
    assert!(
        output.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A work repository and the bare repository it is pushed to.
pub struct Repo {
    /// Where commits are made.
    pub work: PathBuf,
    /// `<root>/<name>.git`, what servers export.
    pub bare: PathBuf,
}

impl Repo {
    /// Creates `<root>/<name>.git` from a work tree under `dir`, with one
    /// commit per `(tag, index.html content)` pair, each tagged.
    pub fn create(dir: &Path, root: &Path, name: &str, versions: &[(&str, &str)]) -> Repo {
        let work = dir.join(format!("{name}-work"));
        std::fs::create_dir_all(&work).expect("work dir");
        std::fs::create_dir_all(root).expect("git root");
        git(&work, &["init", "-q", "-b", "main"]);
        let bare = root.join(format!("{name}.git"));
        git(root, &["init", "-q", "--bare", &bare.display().to_string()]);
        git(
            &work,
            &["remote", "add", "origin", &bare.display().to_string()],
        );
        let repo = Repo { work, bare };
        for (tag, content) in versions {
            repo.commit_tag(tag, content);
        }
        repo
    }

    /// Writes `index.html`, commits, tags `tag` and pushes.
    pub fn commit_tag(&self, tag: &str, content: &str) {
        std::fs::write(self.work.join("index.html"), content).expect("write index.html");
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", tag]);
        git(&self.work, &["tag", tag]);
        git(&self.work, &["push", "-q", "origin", "main", "--tags"]);
    }

    /// The commit a tag names.
    pub fn rev(&self, tag: &str) -> String {
        git(&self.work, &["rev-parse", &format!("{tag}^{{commit}}")])
    }
}

/// A server process killed (by PID) when dropped.
pub struct Server {
    child: Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `git daemon` exporting every repository under `root`.
pub fn daemon(root: &Path) -> Server {
    let port = crate::free_port();
    // git-daemon itself: the `git daemon` wrapper forks it, and killing
    // the wrapper would leave the server running.
    let exec_path = git(root, &["--exec-path"]);
    let child = Command::new(Path::new(&exec_path).join("git-daemon"))
        .args([
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            &format!("--base-path={}", root.display()),
            &root.display().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("git daemon starts");
    crate::eventually(Duration::from_secs(30), "git daemon listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Server { child, port }
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
pub struct TestCa {
    /// The CA certificate (what the minion is told to trust).
    pub ca: PathBuf,
    /// Server certificate.
    pub cert: PathBuf,
    /// Server key.
    pub key: PathBuf,
}

/// Makes a throwaway CA and a 127.0.0.1 server certificate in `dir`.
pub fn test_ca(dir: &Path) -> TestCa {
    std::fs::create_dir_all(dir).expect("ca dir");
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs (install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca_args = vec!["req", "-x509"];
    ca_args.extend(ec);
    ca_args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=halite test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&ca_args);
    let mut csr_args = vec!["req"];
    csr_args.extend(ec);
    csr_args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(&csr_args);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext file");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    TestCa {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

/// `git http-backend` for every repository under `root`, over HTTPS with
/// `tls` when given, behind basic auth `user:password` when given.
pub fn http(root: &Path, tls: Option<&TestCa>, auth: Option<&str>) -> Server {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/git_http_server.py");
    let mut command = Command::new("python3");
    command.arg(script).arg(root);
    if let Some(ca) = tls {
        command.arg("--tls").arg(&ca.cert).arg(&ca.key);
    }
    if let Some(auth) = auth {
        command.arg("--auth").arg(auth);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    let stdout = child.stdout.take().expect("stdout piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("server prints READY");
    let port = line
        .strip_prefix("READY ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("git http server did not start: {line:?}"));
    Server { child, port }
}

/// A plain HTTP server of the files under `root` (python's http.server),
/// for health checks of deployed releases.
pub fn static_files(root: &Path) -> Server {
    let port = crate::free_port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    crate::eventually(Duration::from_secs(30), "http server listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Server { child, port }
}

/// The app the release tests share: `shop` from a repository with tags v1
/// ("one") and v2 ("two"), on `web*`, released under
/// `<dir>/srv/<minion>/shop`, its definition in `<dir>/master/apps.d`.
pub struct Shop {
    /// The repository.
    pub repo: Repo,
    /// Where minions release it (`srv/<id>/shop/current`).
    pub srv: PathBuf,
}

/// [`Shop`] with `staging` (web1, no rules) and `production` (web2,
/// approved by `lead` or `dev`, promoted from staging): what the
/// release-request and portal tests use.
pub type TwoEnvShop = Shop;

impl Shop {
    /// [`Shop`] with its two environments.
    pub fn create(dir: &Path) -> Shop {
        Shop::with(
            dir,
            "[env.staging]\ntarget = \"web1\"\n\
             [env.production]\ntarget = \"web2\"\nrequires_approval = true\napprovers = [\"lead\", \"dev\"]\npromote_from = \"staging\"\n",
        )
    }

    /// Creates the repository and writes the app's definition, `more`
    /// TOML appended to it.
    pub fn with(dir: &Path, more: &str) -> Shop {
        let repo = Repo::create(
            dir,
            &dir.join("git"),
            "shop",
            &[("v1", "one"), ("v2", "two")],
        );
        let srv = dir.join("srv");
        let apps = dir.join("master/apps.d");
        std::fs::create_dir_all(&apps).expect("apps.d");
        std::fs::write(
            apps.join("shop.toml"),
            format!(
                "repo = \"{}\"\ntarget = \"web*\"\npath = \"{}/{{id}}/shop\"\n{more}",
                repo.bare.display(),
                srv.display()
            ),
        )
        .expect("write shop.toml");
        Shop { repo, srv }
    }

    /// What is live on a minion (`index.html` of its current release).
    pub fn live(&self, minion: &str) -> Option<String> {
        std::fs::read_to_string(self.srv.join(minion).join("shop/current/index.html")).ok()
    }
}
